"""Per-task error metrics, their aggregation across tasks, and bootstrap confidence intervals."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def mse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per task: ``(B, n, ...)`` → ``(B,)``."""
    return (pred - y).square().reshape(len(y), -1).mean(dim=1)


def nse(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Nash–Sutcliffe efficiency per task, ``1 − Σ(ŷ−y)² / Σ(y−ȳ)²`` (1 is perfect, 0 is the mean)."""
    y2, p2 = y.reshape(len(y), -1), pred.reshape(len(y), -1)
    return 1.0 - (p2 - y2).square().sum(1) / (y2 - y2.mean(1, keepdim=True)).square().sum(1).clamp_min(1e-12)


@dataclass(frozen=True)
class Metric:
    """A per-task metric with how to aggregate it over tasks and whether larger is better."""

    name: str
    aggregate: str  # "mean" | "median"
    higher_is_better: bool = False

    def __post_init__(self):
        if self.name not in _FUNCS or self.aggregate not in ("mean", "median"):
            raise ValueError(f"metric must be one of {sorted(_FUNCS)} aggregated by mean|median, got {self}")

    def per_task(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _FUNCS[self.name](pred, y)

    def sanitise(self, values: np.ndarray) -> np.ndarray:
        """Diverged tasks (NaN/inf) count as the worst possible value, so failures stay visible."""
        values = np.asarray(values, dtype=np.float64)
        return np.where(np.isfinite(values), values, -np.inf if self.higher_is_better else np.inf)

    def _agg(self, values: np.ndarray, axis=None) -> np.ndarray:
        return np.mean(values, axis=axis) if self.aggregate == "mean" else np.median(values, axis=axis)

    def reduce(self, values: np.ndarray) -> float:
        return float(self._agg(self.sanitise(values)))

    def score(self, values: np.ndarray) -> float:
        """Aggregate to a loss (lower is better); any diverged task makes the score +inf."""
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            return float("inf")
        agg = self.reduce(values)
        return -agg if self.higher_is_better else agg

    def bootstrap_ci(self, values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the aggregate over tasks."""
        values = self.sanitise(values)
        idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
        # inverted_cdf picks order statistics, so infinite aggregates never meet inf − inf interpolation.
        lo, hi = np.quantile(self._agg(values[idx], axis=1), [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
        return float(lo), float(hi)


_FUNCS = {"mse": mse, "nse": nse}
