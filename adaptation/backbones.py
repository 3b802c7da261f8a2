"""Feature extractors for candidate models and domain classifiers: MLP, 1-D CNN, xLSTM sequence encoder."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class BackboneConfig:
    """Backbone choice and size. ``name``: "mlp" (any input, flattened), "cnn1d" or "xlstm" (inputs (channels, T))."""

    name: str = "mlp"
    hidden: int = 64
    depth: int = 2
    dropout: float = 0.0
    kernel_size: int = 5
    num_heads: int = 2
    slstm_at: list[int] = field(default_factory=list)
    chunk_size: int = 32


class MLPBackbone(nn.Module):
    """Flatten, then ``depth`` Linear-ReLU layers of width ``hidden``."""

    def __init__(self, input_shape: tuple[int, ...], cfg: BackboneConfig):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for _ in range(cfg.depth):
            layers += [nn.Linear(width, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1dBackbone(nn.Module):
    """``depth`` Conv1d-BatchNorm-ReLU-MaxPool blocks over (channels, T), then global average pooling."""

    def __init__(self, input_shape: tuple[int, ...], cfg: BackboneConfig):
        super().__init__()
        channels = input_shape[0]
        blocks: list[nn.Module] = []
        for _ in range(cfg.depth):
            blocks += [nn.Conv1d(channels, cfg.hidden, cfg.kernel_size, padding=cfg.kernel_size // 2),
                       nn.BatchNorm1d(cfg.hidden), nn.ReLU(), nn.MaxPool1d(2, ceil_mode=True), nn.Dropout(cfg.dropout)]
            channels = cfg.hidden
        self.net = nn.Sequential(*blocks, nn.AdaptiveAvgPool1d(1), nn.Flatten())
        self.out_dim = cfg.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class XLSTMBackbone(nn.Module):
    """xLSTM sequence classifier body: per-step linear embedding, ``xLSTMBlockStack``, mean over time."""

    def __init__(self, input_shape: tuple[int, ...], cfg: BackboneConfig):
        super().__init__()
        # Imported here so that the vector-data paths work without the sequence core installed.
        from xlstm_core import xLSTMBlockStack, xLSTMBlockStackConfig

        self.embed = nn.Linear(input_shape[0], cfg.hidden)
        self.stack = xLSTMBlockStack(xLSTMBlockStackConfig(
            embedding_dim=cfg.hidden, num_blocks=cfg.depth, num_heads=cfg.num_heads, slstm_at=list(cfg.slstm_at),
            reverse_at=[], dropout=cfg.dropout, drop_path=0.0, backend="auto", chunk_size=cfg.chunk_size))
        self.out_dim = cfg.hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(self.embed(x.transpose(1, 2))).mean(dim=1)


BACKBONES = {"mlp": MLPBackbone, "cnn1d": CNN1dBackbone, "xlstm": XLSTMBackbone}


def make_backbone(input_shape: tuple[int, ...], cfg: BackboneConfig) -> nn.Module:
    """Backbone for inputs of shape ``input_shape`` (without the batch axis); has ``out_dim``."""
    if cfg.name not in BACKBONES:
        raise ValueError(f"backbone: expected one of {sorted(BACKBONES)}, got {cfg.name!r}")
    if cfg.name != "mlp" and len(input_shape) != 2:
        raise ValueError(f"backbone {cfg.name!r}: expected inputs of shape (channels, T), got {tuple(input_shape)}")
    return BACKBONES[cfg.name](tuple(input_shape), cfg)


class Classifier(nn.Module):
    """Backbone plus a linear head; ``forward`` returns (features, logits)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: BackboneConfig):
        super().__init__()
        self.backbone = make_backbone(input_shape, cfg)
        self.head = nn.Linear(self.backbone.out_dim, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return features, self.head(features)


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of a (features, logits) model in eval mode, batched."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size])[1] for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out
