"""Learning-rate and step-count selection by grid search on validation tasks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .adapt import adapt_and_evaluate
from .functional import FlatModel
from .methods import Method
from .metrics import Metric


@dataclass
class Choice:
    lr: float
    steps: int
    score: float  # aggregated validation metric (lower is better; NSE is negated)


def grid_search(
    fm: FlatModel,
    method: Method,
    support: tuple[torch.Tensor, torch.Tensor],
    query: tuple[torch.Tensor, torch.Tensor],
    lrs: Sequence[float],
    steps: Sequence[int],
    metric: Metric,
) -> Choice:
    """Try every learning rate in ``lrs``, read the validation metric after every count in ``steps`` along one
    trajectory, and keep the best pair. Methods without a grid (no fine-tuning) get ``steps=0``."""
    if method.grid == "none":
        val = adapt_and_evaluate(fm, method.theta, support, query, method.rule, 1.0, [0], metric)[0]
        return Choice(0.0, 0, metric.score(val.numpy()))
    if not lrs or not steps:
        raise ValueError(f"grid for {method.name} needs learning rates and step counts, got {lrs}, {steps}")
    best = Choice(float("nan"), 0, float("inf"))
    for lr in lrs:
        curve = adapt_and_evaluate(fm, method.theta, support, query, method.rule, lr, steps, metric)
        for s, val in curve.items():
            score = metric.score(val.numpy())
            if score < best.score:
                best = Choice(float(lr), int(s), score)
    if best.score == float("inf"):
        best = Choice(float(min(lrs)), 0, best.score)  # every setting diverged: fall back to no adaptation
    return best
