"""Domains, source->target scenarios, and their train / validation / test splits."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..validation import check_features


@dataclass
class Domain:
    """One domain's splits. Train trains candidates; val is the held-out set for weights and selectors; test scores."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Scenario:
    """A source -> target adaptation task of a dataset."""

    dataset: str
    name: str
    source: Domain
    target: Domain
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.source.x_train.shape[1:])


def split_domain(x: np.ndarray, y: np.ndarray, sizes: tuple[float, float, float], seed: int) -> Domain:
    """Shuffle and split into train/val/test. ``sizes``: three counts (ints) or three fractions summing to <= 1."""
    x = check_features(x, "x")
    y = np.asarray(y, dtype=np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y: expected shape ({x.shape[0]},), got {y.shape}")
    counts = [int(s * len(x)) if isinstance(s, float) else int(s) for s in sizes]
    if len(counts) != 3 or min(counts) <= 0 or sum(counts) > len(x):
        raise ValueError(f"sizes: expected three positive split sizes totalling <= {len(x)} samples, got {sizes}")
    order = np.random.default_rng(seed).permutation(len(x))
    a, b, c = np.split(order[: sum(counts)], np.cumsum(counts)[:2])
    return Domain(x[a], y[a], x[b], y[b], x[c], y[c])


def standardize(scenario: Scenario) -> Scenario:
    """Scale every split by the source-train mean/std per feature (per channel for (channels, T) inputs).

    Only source statistics are used, so the shift between the domains is kept.
    """
    xs = scenario.source.x_train
    axes = (0, 2) if xs.ndim == 3 else (0,)
    mean = xs.mean(axis=axes, keepdims=True)
    std = xs.std(axis=axes, keepdims=True) + 1e-6

    def scale(d: Domain) -> Domain:
        return Domain((d.x_train - mean) / std, d.y_train, (d.x_val - mean) / std, d.y_val,
                      (d.x_test - mean) / std, d.y_test)

    return Scenario(scenario.dataset, scenario.name, scale(scenario.source), scale(scenario.target),
                    scenario.num_classes)


def holdout_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices of a held-out set into a fit half and an evaluation half."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])
