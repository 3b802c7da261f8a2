"""Input checks shared by the public entry points of `adaptation` (selectors, weighting, data)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_PROB_ATOL = 1e-3


def check_preds(preds: Sequence[np.ndarray], name: str = "preds", n_models: int | None = None) -> np.ndarray:
    """Stack K candidate probability arrays of shape (n, classes) into one (K, n, classes) float64 array.

    Raises ValueError unless every array is 2-D, all shapes agree, there are at least two classes,
    the values are finite, non-negative and each row sums to one (softmax outputs).
    """
    arrays = list(preds)
    if len(arrays) == 0:
        raise ValueError(f"{name}: expected a non-empty sequence of K arrays of shape (n, classes), got none")
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    first = arrays[0].shape
    for k, a in enumerate(arrays):
        if a.ndim != 2:
            raise ValueError(f"{name}[{k}]: expected shape (n, classes), got {a.shape}")
        if a.shape != first:
            raise ValueError(f"{name}[{k}]: shape {a.shape} differs from {name}[0] shape {first}")
    stacked = np.stack(arrays)
    if n_models is not None and stacked.shape[0] != n_models:
        raise ValueError(f"{name}: expected {n_models} candidate arrays (as in fit), got {stacked.shape[0]}")
    if stacked.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one sample, got n=0")
    if stacked.shape[2] < 2:
        raise ValueError(f"{name}: expected probabilities over at least 2 classes, got {stacked.shape[2]} (single class)")
    if not np.all(np.isfinite(stacked)):
        raise ValueError(f"{name}: probabilities contain NaN or inf")
    if stacked.min() < 0:
        raise ValueError(f"{name}: probabilities must be non-negative, got min {stacked.min():.3g}")
    row_sums = stacked.sum(axis=2)
    if not np.allclose(row_sums, 1.0, atol=_PROB_ATOL):
        worst = float(np.abs(row_sums - 1.0).max())
        raise ValueError(f"{name}: each row must be a probability vector summing to 1 (softmax outputs); "
                         f"largest deviation {worst:.3g}")
    return stacked


def check_labels(labels: np.ndarray, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Integer class labels of shape (n,) with values in [0, n_classes)."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) to match the predictions, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
            raise ValueError(f"{name}: expected integer class labels, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"{name}: expected labels in [0, {n_classes}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def check_weights(weights: np.ndarray, n: int, name: str = "weights") -> np.ndarray:
    """Finite non-negative importance weights of shape (n,), not all zero."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},) to match the source predictions, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name}: importance weights contain NaN or inf")
    if w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"{name}: importance weights must be non-negative and not all zero")
    return w


def check_features(x: np.ndarray, name: str) -> np.ndarray:
    """A finite float array with samples along the first axis."""
    a = np.asarray(x, dtype=np.float32)
    if a.ndim < 2 or a.shape[0] == 0:
        raise ValueError(f"{name}: expected an array of shape (n, ...) with n > 0 and at least 2 dims, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: contains NaN or inf")
    return a
