"""Relative-error checks with per-dtype tolerances, shared by the kernel tests.

A check passes when ||actual - expected|| <= rtol * ||expected|| + atol * sqrt(numel): relative in the norm, with a
small absolute floor for quantities that are zero up to rounding (e.g. gradients that only flow through eps).
fp32 on a CUDA device is held to the tf32 bound, since Triton's fp32 dot products run on the matrix units as tf32.
"""
from __future__ import annotations

import math

import torch

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
TF32_TOLERANCE = 5e-3


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp64."""
    diff = (actual.double() - expected.double()).norm()
    return (diff / expected.double().norm().clamp_min(1e-30)).item()


def tolerance(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """Relative bound for kernels run on `dtype` inputs on `device`."""
    if dtype == torch.float32 and torch.device(device).type == "cuda":
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, name: str = "",
                 factor: float = 1.0, atol: float = 0.0) -> None:
    """Assert the relative error of `actual` is within `factor` times the tolerance of `dtype` (+ optional floor)."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    diff = (actual.double() - expected.double()).norm().item()
    bound = tolerance(dtype, actual.device) * factor * expected.double().norm().item()
    bound += atol * math.sqrt(expected.numel())
    assert diff <= bound, f"{name}: |diff| {diff:.3e} > bound {bound:.3e} (rel {rel_err(actual, expected):.3e})"
