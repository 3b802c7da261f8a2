"""Depthwise k x k conv + SiLU on a token grid in Triton, for inference, read in the token layout.

    y = silu(depthwise_conv2d(x on an (H, W) grid, weight, bias)),   x, y: (B, T = H * W, D)

PyTorch runs this as three passes on ViL's layout: a copy of x into channels-last (the layer's x is a chunk of the
up-projection), cuDNN's depthwise kernel and the SiLU. Here one program takes BT consecutive tokens and BD channels
of one image and sums the k * k shifted tiles of x (zero outside the grid) in fp32: one read of x (the shifted tiles
hit the cache) and one write of y. Forward only: a fused backward (pre-activation recomputed, du, partial weight
sums, dx by the flipped kernel) made ViL-T's training step slower on an H100 than cuDNN's backward (eager 90.0 ->
92.8 ms, compiled 71.3 -> 75.8 ms of GPU time), so training keeps PyTorch's conv (`GridConv2d.conv_silu`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tokens x channels per program, and warps: the fastest of 26 shapes in an H100 sweep with x where the compiled layer
# leaves it, a strided slice of the up-projection's output (`python -m benchmarks.grid_conv_tiles`,
# benchmarks/results/grid_conv_tiles.json): 0.050 ms at ViL-T's shape (batch 256, 14 x 14 tokens, 384 channels,
# bf16), 0.097 / 0.096 ms at ViL-S / ViL-B's: 2.5x faster than cuDNN's conv + SiLU, and as fast as PyTorch's copy of
# the strided slice into a dense tensor (the same bytes), so the strided read, not the stencil, sets the time (the
# read + write floor at 3 TB/s is half of it). The previous pin, 8 x 128 with 2 warps (148 registers, 19% occupancy),
# took 0.074 ms once the up-projection had widened to 1,216 columns.
BT, BD, WARPS = 16, 64, 2


@triton.jit
def _shifted(ptr, b, row, col, d, mask_t, mask_d, di, dj, H, W, s_b, s_t):
    """Tile of a (B, T, D) tensor at the grid positions (row + di, col + dj), zero outside the grid, in fp32."""
    r, c = row + di, col + dj
    ok = mask_t & (r >= 0) & (r < H) & (c >= 0) & (c < W)
    offs = b * s_b + (r * W + c)[:, None] * s_t + d[None, :]
    return tl.load(ptr + offs, mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def _conv_silu_kernel(X, WT, BIAS, Y, T, H, W, D, sx_b, sx_t, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """y = silu(u), u = bias + sum over the k x k taps of weight[d, i, j] * x[row + i - k // 2, col + j - k // 2] for
    BT tokens (grid row and column from the token index) and BD channels of one image."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    row, col, mask_t, mask_d = t // W, t % W, t < T, d < D
    u = tl.zeros((BT, BD), dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            w = tl.load(WT + d * (K * K) + i * K + j, mask=mask_d, other=0.0).to(tl.float32)
            u += _shifted(X, b, row, col, d, mask_t, mask_d, i - K // 2, j - K // 2, H, W, sx_b, sx_t) * w[None, :]
    u += tl.load(BIAS + d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + b * T * D + t[:, None] * D + d[None, :], (u * tl.sigmoid(u)).to(Y.dtype.element_ty),
             mask=mask_t[:, None] & mask_d[None, :])


@torch.library.custom_op("xlstm_kit::grid_conv_silu", mutates_args=())
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """y (B, T, D) contiguous, in x's dtype. Not exported: `grid_conv_silu_triton` is the entry point."""
    B, T, D = x.shape
    y = x.new_empty(B, T, D)
    _conv_silu_kernel[(B, triton.cdiv(T, BT), triton.cdiv(D, BD))](
        x, weight, bias, y, T, height, width, D, x.stride(0), x.stride(1), K=weight.shape[-1], BT=BT, BD=BD,
        num_warps=WARPS)
    return y


@_forward.register_fake
def _(x, weight, bias, height, width):
    return x.new_empty(x.shape)


def grid_conv_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          grid: tuple[int, int]) -> torch.Tensor:
    """silu(depthwise conv) of x (B, T, D) on the (H, W) token grid; weight (D, 1, K, K), bias (D,); returns a
    contiguous (B, T, D) tensor in x's dtype, without a graph for autograd. Shapes are checked by
    `GridConv2d.conv_silu`; here only a unit channel stride and contiguous parameters are ensured."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return _forward(x, weight.contiguous(), bias.contiguous(), int(grid[0]), int(grid[1]))


__all__ = ["grid_conv_silu_triton"]
