"""LRAM (xLSTM backbone) and the Decision-Transformer baseline: same tokens, same shared action head.

Per timestep t one token is formed from the observation o_t (linear for padded vectors, small CNN for 64x64 frames),
the previous action a_{t-1} (sum of the embeddings of its (dimension, bin) pairs), the previous reward r_{t-1}
(symlog) and, optionally, the return-to-go R_t; the backbone maps tokens to features and the shared head predicts
a_t as ``max_action_dims`` rows of ``num_bins`` logits, masked to the bins valid for the task.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_core import xLSTMBlockStack, xLSTMBlockStackConfig

from .data.loader import IMAGE_SIZE
from .tokens import NUM_BINS
from .transformer import CausalTransformer

BACKBONES = ("lram", "dt")


def slstm_positions(num_blocks: int, share: float) -> list[int]:
    """Indices of sLSTM blocks for a share in [0, 1], spread evenly (e.g. 4 blocks, 0.25 -> [3])."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"slstm_share must be in [0, 1], got {share}")
    count = round(num_blocks * share)
    if count == 0:
        return []
    stride = num_blocks / count
    return sorted({min(num_blocks - 1, int((k + 1) * stride) - 1) for k in range(count)})


@dataclass
class ActionModelConfig:
    """Model configuration. ``dt_layers=None`` picks the DT depth whose backbone matches LRAM's parameter count."""

    backbone: str = "lram"
    embedding_dim: int = 128
    num_blocks: int = 4
    num_heads: int = 4
    slstm_share: float = 0.0
    max_obs_dim: int = 64
    max_action_dims: int = 8
    num_bins: int = NUM_BINS
    use_rtg: bool = True
    dropout: float = 0.1
    chunk_size: int = 64
    backend: str = "auto"
    dt_layers: int | None = None
    stack_overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.max_action_dims < 1 or self.max_obs_dim < 1:
            raise ValueError("max_action_dims and max_obs_dim must be >= 1")

    def stack_config(self) -> xLSTMBlockStackConfig:
        return xLSTMBlockStackConfig(
            embedding_dim=self.embedding_dim, num_blocks=self.num_blocks, num_heads=self.num_heads,
            slstm_at=slstm_positions(self.num_blocks, self.slstm_share), dropout=self.dropout,
            chunk_size=self.chunk_size, backend=self.backend, **self.stack_overrides)

    def to_dict(self) -> dict:
        return asdict(self)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matched_dt_layers(cfg: ActionModelConfig) -> int:
    """Number of Transformer blocks whose parameters best match LRAM's xLSTM stack at the same width."""
    lram = _count(xLSTMBlockStack(cfg.stack_config()))
    per_block = _count(CausalTransformer(cfg.embedding_dim, 1, cfg.num_heads)) - 2 * cfg.embedding_dim
    return max(1, round((lram - 2 * cfg.embedding_dim) / per_block))


class FrameEncoder(nn.Module):
    """Nature-DQN-style CNN for (N, 64, 64) uint8 frames -> (N, E)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
                                 nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 4 * 4, dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.net(frames.unsqueeze(1).float() / 255.0)


class ActionModel(nn.Module):
    """LRAM or DT over per-timestep tokens; see the module docstring and `rl.data.loader.MultiTaskSampler` for
    the batch layout. ``forward`` is the parallel (training) pass, ``step`` the one-timestep inference pass."""

    def __init__(self, cfg: ActionModelConfig):
        super().__init__()
        self.cfg = cfg
        e, a, nb = cfg.embedding_dim, cfg.max_action_dims, cfg.num_bins
        self.obs_embed = nn.Linear(cfg.max_obs_dim, e)
        self.frame_embed = FrameEncoder(e)
        self.action_embed = nn.Embedding(a * nb, e)
        self.start_embed = nn.Parameter(torch.zeros(e))
        self.reward_embed = nn.Linear(1, e)
        self.rtg_embed = nn.Linear(1, e) if cfg.use_rtg else None
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.backbone == "lram":
            self.backbone = xLSTMBlockStack(cfg.stack_config())
        else:
            self.backbone = CausalTransformer(e, cfg.dt_layers or matched_dt_layers(cfg), cfg.num_heads, cfg.dropout)
        self.head = nn.Linear(e, a * nb)
        self.register_buffer("_row_offsets", torch.arange(a) * nb, persistent=False)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokens (B, T, E) of a batch (or of a single step with T = 1)."""
        obs = batch["obs"]
        b, t = obs.shape[:2]
        x = self.obs_embed(obs)
        if "frames" in batch:  # decided by the batch's keys, not its values: no host sync, CUDA-graph safe
            frames = self.frame_embed(batch["frames"].reshape(-1, IMAGE_SIZE, IMAGE_SIZE)).view(b, t, -1)
            x = torch.where(batch["is_image"][:, None, None], frames.to(x.dtype), x)
        rows = batch["action_mask"].any(-1)  # (B, A) rows this task uses
        act = self.action_embed(batch["prev_actions"] + self._row_offsets)  # (B, T, A, E)
        act = (act * rows[:, None, :, None]).sum(2)
        first = batch["first"].unsqueeze(-1)
        x = x + torch.where(first, self.start_embed.to(x.dtype), act)
        x = x + self.reward_embed(batch["prev_rewards"].unsqueeze(-1))
        if self.rtg_embed is not None:
            x = x + self.rtg_embed(batch["rtg"].unsqueeze(-1))
        return self.drop(x)

    def logits(self, features: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
        """Features (B, [T,] E) -> masked logits (B, [T,] A, bins) in fp32; invalid bins are -inf."""
        out = self.head(features).float().unflatten(-1, (self.cfg.max_action_dims, self.cfg.num_bins))
        mask = action_mask if out.dim() == 3 else action_mask.unsqueeze(1)
        return out.masked_fill(~mask, float("-inf"))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Parallel pass: masked logits (B, T, A, bins)."""
        return self.logits(self.backbone(self.embed(batch)), batch["action_mask"])

    def loss(self, batch: dict[str, torch.Tensor], logits: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Cross-entropy over the valid action rows of the valid timesteps, and the bin accuracy."""
        logits = self.forward(batch) if logits is None else logits
        rows = batch["action_mask"].any(-1)[:, None, :] & batch["valid"][:, :, None]  # (B, T, A)
        chosen = logits[rows]
        target = batch["actions"][rows]
        loss = F.cross_entropy(chosen, target)
        accuracy = (chosen.argmax(-1) == target).float().mean()
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}

    def init_state(self, batch: int, window: int = 0, device=None, dtype=torch.float32):
        """Fresh inference state: None for LRAM (the stack starts its own), a KV cache of ``window`` slots for DT."""
        if self.cfg.backbone == "lram":
            return None
        if window < 1:
            raise ValueError("the DT baseline needs a KV-cache window >= 1")
        return self.backbone.init_cache(batch, window, device, dtype)

    def step(self, inputs: dict[str, torch.Tensor], state):
        """One timestep for B parallel envs: inputs as a batch with T = 1 -> (masked logits (B, A, bins), state)."""
        token = self.embed(inputs)[:, 0]
        features, state = self.backbone.step(token, state)
        return self.logits(features, inputs["action_mask"]), state
