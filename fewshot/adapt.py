"""Few-shot adaptation on support sets, batched over tasks.

An :class:`UpdateRule` is a torch optimizer (SGD or Adam, both element-wise, so tasks never mix) applied to a
transformed gradient: the SubGD preconditioner, MetaSGD's learned per-parameter step sizes, or nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .functional import FlatModel
from .metrics import Metric

_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


@dataclass
class UpdateRule:
    """``optimizer`` ∈ {"sgd", "adam"}; ``transform`` maps gradients ``(B, p)`` → ``(B, p)`` before the step."""

    optimizer: str = "sgd"
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self):
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(_OPTIMIZERS)}, got {self.optimizer!r}")


def adapt_and_evaluate(
    fm: FlatModel,
    theta0: torch.Tensor,
    support: tuple[torch.Tensor, torch.Tensor],
    query: tuple[torch.Tensor, torch.Tensor],
    rule: UpdateRule,
    lr: float,
    checkpoints: Sequence[int],
    metric: Metric,
) -> dict[int, torch.Tensor]:
    """Full-batch gradient steps on each task's support set from ``theta0 (p,)``; returns the per-task query
    metric ``(B,)`` after every step count in ``checkpoints`` (0 = no fine-tuning)."""
    if not checkpoints or min(checkpoints) < 0:
        raise ValueError(f"checkpoints must be non-negative step counts, got {list(checkpoints)}")
    x_s, y_s = support
    x_q, y_q = query
    theta = theta0.detach().expand(len(x_s), -1).clone().requires_grad_(True)
    opt = _OPTIMIZERS[rule.optimizer]([theta], lr=lr)
    out: dict[int, torch.Tensor] = {}
    wanted = set(checkpoints)
    for step in range(max(checkpoints) + 1):
        if step in wanted:
            with torch.no_grad():
                out[step] = metric.per_task(fm.predict(theta, x_q), y_q)
        if step == max(checkpoints):
            break
        opt.zero_grad()
        fm.loss(theta, x_s, y_s).sum().backward()
        if rule.transform is not None:
            theta.grad = rule.transform(theta.grad)
        opt.step()
    return out
