"""One training loop for candidates (CE_source + lambda * L_DA) and, with lambda = 0, for domain classifiers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .backbones import predict_logits
from .methods import DABatch, DAMethod


@dataclass
class TrainConfig:
    """Optimiser settings: Adam with weight decay, ``steps`` minibatch updates of ``batch_size`` per domain."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    device: str = "cpu"


def train_model(model: nn.Module, x_source: np.ndarray, y_source: np.ndarray, cfg: TrainConfig, seed: int,
                x_target: np.ndarray | None = None, method: DAMethod | None = None, lam: float = 0.0) -> nn.Module:
    """Train a (features, logits) ``model`` on labelled source data, adding ``lam * method(batch)`` on target batches.

    With ``lam == 0`` or no method, the target data is not touched (source-only training). Deterministic given
    ``seed``; Adam is invariant to the gradient scale, so an adversary inside ``method`` learns at the same pace for
    every lambda > 0.
    """
    if lam < 0:
        raise ValueError(f"lam: expected a non-negative trade-off, got {lam}")
    adapt = method is not None and lam > 0
    if adapt and x_target is None:
        raise ValueError("x_target: a DA method with lam > 0 needs unlabelled target data")
    device = torch.device(cfg.device)
    generator = torch.Generator().manual_seed(seed)
    xs = torch.as_tensor(x_source, dtype=torch.float32, device=device)
    ys = torch.as_tensor(y_source, dtype=torch.long, device=device)
    xt = torch.as_tensor(x_target, dtype=torch.float32, device=device) if adapt else None
    model.to(device).train()
    params = list(model.parameters())
    if adapt:
        method.to(device).train()
        params += list(method.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    for _ in range(cfg.steps):
        idx_s = torch.randint(0, xs.shape[0], (cfg.batch_size,), generator=generator).to(device)
        feats_s, logits_s = model(xs[idx_s])
        loss = F.cross_entropy(logits_s, ys[idx_s])
        if adapt:
            idx_t = torch.randint(0, xt.shape[0], (cfg.batch_size,), generator=generator).to(device)
            feats_t, logits_t = model(xt[idx_t])
            batch = DABatch(model, xs[idx_s], ys[idx_s], xt[idx_t], feats_s, logits_s, feats_t, logits_t)
            loss = loss + lam * method(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model


def predict_proba(model: nn.Module, x: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Softmax outputs of a (features, logits) model on ``x`` as float64 numpy (n, classes)."""
    logits = predict_logits(model.to(device), torch.as_tensor(x, dtype=torch.float32, device=device))
    return torch.softmax(logits.double(), dim=1).cpu().numpy()
