"""Input checks shared by the public operator entry points; messages say what was expected."""
from __future__ import annotations

import torch

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x, ndim: int, layout: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dims {layout}, got shape {tuple(x.shape)}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} has unsupported dtype {x.dtype}; expected one of {SUPPORTED_DTYPES}")


def check_shape(name: str, x: torch.Tensor, expected: tuple[int, ...], layout: str) -> None:
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {layout} = {tuple(expected)}, got {tuple(x.shape)}")


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"all inputs must be on one device, got {devices}")


def check_mlstm_state(state, batch: int, heads: int, dqk: int, dv: int) -> None:
    """An mLSTM recurrent state (C, n, m) of shapes (B, NH, DHQK, DHV), (B, NH, DHQK), (B, NH)."""
    if not (isinstance(state, (tuple, list)) and len(state) == 3):
        raise ValueError("initial_state must be a tuple (C, n, m)")
    c, n, m = state
    check_shape("initial_state C", c, (batch, heads, dqk, dv), "(B, NH, DHQK, DHV)")
    check_shape("initial_state n", n, (batch, heads, dqk), "(B, NH, DHQK)")
    check_shape("initial_state m", m, (batch, heads), "(B, NH)")
