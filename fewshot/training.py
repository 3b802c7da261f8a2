"""Supervised training with early stopping, batched over tasks: pre-training θ0 and collecting the
fine-tuning updates δ_i = θ_best − θ0 from which SubGD fits its subspace."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .functional import FlatModel
from .tasks.base import Task, stack_pool


@dataclass
class TrainConfig:
    """Adam with early stopping on held-out data: evaluate every ``eval_every`` steps, stop after ``patience``
    evaluations without improvement (per task), at most ``max_steps``; ``batch_size=None`` is full batch."""

    lr: float = 1e-3
    max_steps: int = 2000
    eval_every: int = 10
    patience: int = 20
    batch_size: int | None = None
    holdout: float = 0.2
    chunk: int = 50
    seed: int = 0


def split_holdout(x: torch.Tensor, y: torch.Tensor, frac: float, seed: int):
    """Split the sample dimension (dim 1) of ``(B, n, ...)`` tensors into train and held-out parts."""
    n = x.shape[1]
    n_val = int(round(frac * n))
    if not 1 <= n_val < n:
        raise ValueError(f"holdout fraction {frac} leaves no training or no held-out samples out of {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    tr, va = perm[n_val:], perm[:n_val]
    return x[:, tr], y[:, tr], x[:, va], y[:, va]


def train_early_stopping(
    fm: FlatModel, theta0: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Train ``B`` copies of ``theta0 (p,)`` on the pools ``x, y (B, n, ...)``; return the best parameters
    on each task's held-out split, ``(B, p)``."""
    x_tr, y_tr, x_va, y_va = split_holdout(x, y, cfg.holdout, cfg.seed)
    b, n = x_tr.shape[:2]
    theta = theta0.detach().expand(b, -1).clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = theta.detach().clone()
    with torch.no_grad():
        best_loss = fm.loss(theta, x_va, y_va)
    waited = torch.zeros(b, dtype=torch.long)
    for step in range(1, cfg.max_steps + 1):
        if cfg.batch_size is not None and cfg.batch_size < n:
            idx = torch.randperm(n, generator=gen)[: cfg.batch_size]
            xb, yb = x_tr[:, idx], y_tr[:, idx]
        else:
            xb, yb = x_tr, y_tr
        opt.zero_grad()
        fm.loss(theta, xb, yb).sum().backward()
        opt.step()
        if step % cfg.eval_every == 0:
            with torch.no_grad():
                val = fm.loss(theta, x_va, y_va)
                better = val < best_loss
                best[better] = theta.detach()[better]
                best_loss = torch.where(better, val, best_loss)
                waited = torch.where(better, 0, waited + 1)
            if (waited >= cfg.patience).all():
                break
    return best


def pool_tasks(tasks: Sequence[Task]) -> tuple[torch.Tensor, torch.Tensor]:
    """All training pools of ``tasks`` concatenated into one task: ``(1, Σn, ...)``."""
    return torch.cat([t.x_train for t in tasks])[None], torch.cat([t.y_train for t in tasks])[None]


def pretrain(fm: FlatModel, tasks: Sequence[Task], cfg: TrainConfig) -> torch.Tensor:
    """Pre-train θ0 from the module's current parameters on the pooled training data of ``tasks``."""
    if not tasks:
        raise ValueError("pre-training needs at least one task")
    return train_early_stopping(fm, fm.flatten(), *pool_tasks(tasks), cfg)[0]


def collect_updates(
    fm: FlatModel, theta0: torch.Tensor, tasks: Sequence[Task], cfg: TrainConfig, progress: bool = True
) -> torch.Tensor:
    """Fine-tune θ0 on each task (``cfg.chunk`` tasks at a time) and return the updates ``(N, p)``."""
    if not tasks:
        raise ValueError("collecting updates needs at least one training task")
    out = []
    for i in tqdm(range(0, len(tasks), cfg.chunk), desc="fine-tune training tasks", disable=not progress):
        best = train_early_stopping(fm, theta0, *stack_pool(tasks[i : i + cfg.chunk], "train"), cfg)
        out.append(best - theta0)
    return torch.cat(out)
