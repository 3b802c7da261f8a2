"""Shared action vocabulary: every action dimension is a row of ``num_bins`` bins (256, as in LRAM).

A discrete action with ``n`` choices uses row 0, bins ``0..n-1``; a continuous action of ``d`` dimensions uses rows
``0..d-1``, each discretised uniformly over its ``[low, high]`` range. The per-task output mask marks the valid
(row, bin) pairs, so one head serves every domain.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

NUM_BINS = 256


@dataclass
class ActionCodec:
    """Encode actions of one task into bins and back (``discrete_n > 0``: discrete; else continuous low/high)."""

    discrete_n: int
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    num_bins: int = NUM_BINS

    def __post_init__(self):
        if self.discrete_n > self.num_bins:
            raise ValueError(f"{self.discrete_n} discrete actions do not fit in {self.num_bins} bins")
        if self.discrete_n == 0 and (not self.low or len(self.low) != len(self.high)):
            raise ValueError("a continuous codec needs low and high of equal, non-zero length")
        if self.discrete_n < 0:
            raise ValueError(f"discrete_n must be >= 0, got {self.discrete_n}")

    @property
    def dims(self) -> int:
        """Number of head rows this task uses."""
        return 1 if self.discrete_n else len(self.low)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """(N,) discrete or (N, d) continuous actions -> (N, dims) int64 bins."""
        actions = np.asarray(actions)
        if self.discrete_n:
            return actions.reshape(-1, 1).astype(np.int64)
        low, high = np.asarray(self.low), np.asarray(self.high)
        unit = (actions.reshape(-1, self.dims) - low) / (high - low)
        return np.clip(np.floor(unit * self.num_bins), 0, self.num_bins - 1).astype(np.int64)

    def decode(self, bins: np.ndarray) -> np.ndarray:
        """(..., dims) bins -> (...) discrete actions or (..., d) continuous actions at the bin centres."""
        bins = np.asarray(bins)[..., : self.dims]
        if self.discrete_n:
            return bins[..., 0].astype(np.int64)
        low, high = np.asarray(self.low, np.float32), np.asarray(self.high, np.float32)
        return (low + (bins + 0.5) / self.num_bins * (high - low)).astype(np.float32)

    def output_mask(self, max_dims: int, num_bins: int | None = None) -> torch.Tensor:
        """(max_dims, num_bins) bool: the bins this task may predict."""
        num_bins = num_bins or self.num_bins
        if self.dims > max_dims:
            raise ValueError(f"task needs {self.dims} action dims > max_action_dims={max_dims}")
        mask = torch.zeros(max_dims, num_bins, dtype=torch.bool)
        if self.discrete_n:
            mask[0, : self.discrete_n] = True
        else:
            mask[: self.dims] = True
        return mask
