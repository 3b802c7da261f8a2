"""Optimiser pieces the training loops share: AdamW parameter groups and the warm-up + cosine schedule."""
from __future__ import annotations

import math

from torch import nn


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate factor at `step`: linear warm-up to 1 over `warmup_steps`, then cosine decay to `min_ratio`
    at `total_steps` (held there after)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def weight_decay_groups(model: nn.Module, weight_decay: float, skip: tuple[str, ...] = ()) -> list[dict]:
    """Two AdamW parameter groups: matrices (dim >= 2) with `weight_decay`; norms, biases, gate biases, 1-D scales
    and parameters whose name contains one of `skip` (e.g. "embed") without. Frozen parameters are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not any(s in name for s in skip) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
