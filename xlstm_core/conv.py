"""Depthwise convolutions over the token sequence: causal 1-D with a carried state, and 2-D on a token grid (ViL)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.dispatch import resolve_backend


class CausalConv1d(nn.Module):
    """Depthwise causal conv over (B, T, D). The state is the last kernel_size - 1 inputs, so a sequence processed
    in pieces (or token by token) gives the same output as processed whole."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(dim, kernel_size))
        self.bias = nn.Parameter(torch.zeros(dim))
        nn.init.kaiming_uniform_(self.weight.view(dim, 1, kernel_size), a=5**0.5)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, D = x.shape
        if state is None:
            state = x.new_zeros(B, self.kernel_size - 1, D)
        full = torch.cat([state.to(x.dtype), x], dim=1)  # (B, K-1+T, D)
        if T == 1:  # decoding: a dot product per channel, no conv launch
            y = (full * self.weight.t().to(x.dtype)).sum(1, keepdim=True) + self.bias.to(x.dtype)
        else:
            y = F.conv1d(full.transpose(1, 2), self.weight.unsqueeze(1).to(x.dtype), self.bias.to(x.dtype),
                         groups=D).transpose(1, 2)
        return y, full[:, full.shape[1] - (self.kernel_size - 1):]


class GridConv2d(nn.Module):
    """Depthwise k x k conv on tokens laid out row-major on an (H, W) grid (same padding, not causal)."""

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """x (B, T, D) -> (B, T, D). A dense x is the channels-last layout cuDNN wants; a strided one (the half of
        an up-projection) is made dense here once, instead of by the conv's forward and again by its backward (48
        ATen copies, 2.4 ms of a compiled ViL-T training step)."""
        B, _, D = _check_grid(x, grid)
        y = self.conv(x.contiguous().transpose(1, 2).reshape(B, D, *grid))
        return y.flatten(2).transpose(1, 2)

    def conv_silu(self, x: torch.Tensor, grid: tuple[int, int], backend: str = "auto") -> torch.Tensor:
        """silu(self(x, grid)). Where `backend` resolves to Triton (fp16/bf16/fp32 activations), also inside
        torch.compile graphs (there PyTorch's conv is an external cuDNN call behind a channels-last copy, which
        inductor cannot fuse either): without a gradient to compute (inference) in one fused pass; with one, for
        3 x 3 kernels, as the Triton conv with its own backward (xlstm_core/grid_conv_triton.py) and the SiLU left
        to PyTorch or inductor."""
        _check_grid(x, grid)
        params = (self.conv.weight, self.conv.bias)
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
        triton_backend = resolve_backend(backend, x.device, x.dtype) == "triton"
        if triton_backend and x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"the fused grid conv takes fp16/bf16/fp32 inputs, got {x.dtype}")
        if triton_backend and not needs_grad:
            from xlstm_core.grid_conv_triton import grid_conv_silu_triton

            return grid_conv_silu_triton(x, *params, grid)
        if triton_backend and self.conv.kernel_size == (3, 3):
            from xlstm_core.grid_conv_triton import grid_conv_triton

            return F.silu(grid_conv_triton(x, *params, grid))
        return F.silu(self(x, grid))


def _check_grid(x: torch.Tensor, grid: tuple[int, int]) -> tuple[int, int, int]:
    if x.dim() != 3:
        raise ValueError(f"expected tokens (B, T, D), got shape {tuple(x.shape)}")
    B, T, D = x.shape
    H, W = grid
    if H * W != T:
        raise ValueError(f"grid {grid} holds {H * W} tokens but the sequence has {T}")
    return B, T, D
