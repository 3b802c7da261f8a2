"""Sinusoid regression tasks y = A sin(x − φ) (Finn et al., 2017)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .base import Task, task_rng


@dataclass
class SinusoidFamily:
    """A ~ U[amp_range], φ ~ U[phase_range], x ~ U[x_range]; ``train_pool`` and ``test_pool`` points per task."""

    seed: int = 0
    amp_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)
    train_pool: int = 200
    test_pool: int = 100
    nominal: tuple[float, float] = (2.5, math.pi / 2)
    name: str = "sinusoid"

    def __post_init__(self):
        for nm in ("amp_range", "phase_range", "x_range"):
            lo, hi = getattr(self, nm)
            if not lo <= hi:
                raise ValueError(f"{nm} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.train_pool < 1 or self.test_pool < 1:
            raise ValueError("train_pool and test_pool must be positive")

    def _make(self, rng: np.random.Generator, amp: float, phase: float) -> Task:
        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = rng.uniform(*self.x_range, size=(n, 1))
            return torch.tensor(x, dtype=torch.float32), torch.tensor(amp * np.sin(x - phase), dtype=torch.float32)

        x_tr, y_tr = draw(self.train_pool)
        x_te, y_te = draw(self.test_pool)
        return Task(x_tr, y_tr, x_te, y_te, params={"amplitude": amp, "phase": phase})

    def task(self, split: str, index: int) -> Task:
        rng = task_rng(self.seed, split, index)
        return self._make(rng, float(rng.uniform(*self.amp_range)), float(rng.uniform(*self.phase_range)))

    def tasks(self, split: str, indices: list[int]) -> list[Task]:
        return [self.task(split, i) for i in indices]

    def nominal_task(self) -> Task:
        return self._make(task_rng(self.seed, "nominal", 0), *self.nominal)
