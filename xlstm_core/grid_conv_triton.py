"""Depthwise k x k conv + SiLU on a token grid in Triton, forward and backward, read in the token layout.

    y = silu(depthwise_conv2d(x on an (H, W) grid, weight, bias)),   x, y: (B, T = H * W, D)

PyTorch runs this as three passes on ViL's layout: a copy of x into channels-last (the layer's x is a chunk of the
up-projection), cuDNN's depthwise kernel and the SiLU. Here one program takes BT consecutive tokens and BD channels
of one image and sums the k * k shifted tiles of x (zero outside the grid) in fp32: one read of x (the shifted tiles
hit the cache) and one write of y. The backward recomputes the pre-activation, writes du = dy * silu'(u) in fp32
with per-program partial sums for the weight and bias gradients (one torch sum reduces them), and a second kernel
correlates du with the flipped kernel for dx.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BT, BD = 32, 64  # tokens x channels per program


@triton.jit
def _coords(T, W, D, BT: tl.constexpr, BD: tl.constexpr):
    """This program's image, tokens t (with their grid row and column), channels d, and the masks."""
    b, tb, db = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = tb * BT + tl.arange(0, BT)
    d = db * BD + tl.arange(0, BD)
    return b, tb, t, t // W, t % W, d, t < T, d < D


@triton.jit
def _shifted(ptr, b, row, col, d, mask_t, mask_d, di, dj, H, W, s_b, s_t):
    """Tile of a (B, T, D) tensor at the grid positions (row + di, col + dj), zero outside the grid, in fp32."""
    r, c = row + di, col + dj
    ok = mask_t & (r >= 0) & (r < H) & (c >= 0) & (c < W)
    offs = b * s_b + (r * W + c)[:, None] * s_t + d[None, :]
    return tl.load(ptr + offs, mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)


@triton.jit
def _pre_activation(X, WT, BIAS, b, row, col, d, mask_t, mask_d, H, W, sx_b, sx_t, K: tl.constexpr,
                    BT: tl.constexpr, BD: tl.constexpr):
    """u = bias + sum over the k x k taps of weight[d, i, j] * x[row + i - k // 2, col + j - k // 2]."""
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            w = tl.load(WT + d * (K * K) + i * K + j, mask=mask_d, other=0.0).to(tl.float32)
            acc += _shifted(X, b, row, col, d, mask_t, mask_d, i - K // 2, j - K // 2, H, W, sx_b, sx_t) * w[None, :]
    return acc + tl.load(BIAS + d, mask=mask_d, other=0.0).to(tl.float32)[None, :]


@triton.jit
def _fwd_kernel(X, WT, BIAS, Y, T, H, W, D, sx_b, sx_t, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    b, _, t, row, col, d, mask_t, mask_d = _coords(T, W, D, BT, BD)
    u = _pre_activation(X, WT, BIAS, b, row, col, d, mask_t, mask_d, H, W, sx_b, sx_t, K, BT, BD)
    y = u * tl.sigmoid(u)
    tl.store(Y + b * T * D + t[:, None] * D + d[None, :], y.to(Y.dtype.element_ty),
             mask=mask_t[:, None] & mask_d[None, :])


@triton.jit
def _bwd_du_kernel(X, WT, BIAS, DY, DU, PART, T, H, W, D, n_tb, sx_b, sx_t, sdy_b, sdy_t, K: tl.constexpr,
                   BT: tl.constexpr, BD: tl.constexpr):
    """du = dy * silu'(u) (fp32, (B, T, D)) and this program's partial sums of the weight (K * K taps) and bias
    gradients: PART[program, tap, d], tap K * K is the bias."""
    b, tb, t, row, col, d, mask_t, mask_d = _coords(T, W, D, BT, BD)
    mask = mask_t[:, None] & mask_d[None, :]
    u = _pre_activation(X, WT, BIAS, b, row, col, d, mask_t, mask_d, H, W, sx_b, sx_t, K, BT, BD)
    s = tl.sigmoid(u)
    dy = tl.load(DY + b * sdy_b + t[:, None] * sdy_t + d[None, :], mask=mask, other=0.0).to(tl.float32)
    du = tl.where(mask, dy * s * (1.0 + u * (1.0 - s)), 0.0)
    tl.store(DU + b * T * D + t[:, None] * D + d[None, :], du, mask=mask)
    part = PART + (b * n_tb + tb).to(tl.int64) * (K * K + 1) * D
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            x = _shifted(X, b, row, col, d, mask_t, mask_d, i - K // 2, j - K // 2, H, W, sx_b, sx_t)
            tl.store(part + (i * K + j) * D + d, tl.sum(du * x, axis=0), mask=mask_d)
    tl.store(part + K * K * D + d, tl.sum(du, axis=0), mask=mask_d)


@triton.jit
def _bwd_dx_kernel(DU, WT, DX, T, H, W, D, K: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """dx[row, col] = sum over the taps of weight[d, i, j] * du[row - i + k // 2, col - j + k // 2]."""
    b, _, t, row, col, d, mask_t, mask_d = _coords(T, W, D, BT, BD)
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            w = tl.load(WT + d * (K * K) + i * K + j, mask=mask_d, other=0.0).to(tl.float32)
            acc += _shifted(DU, b, row, col, d, mask_t, mask_d, K // 2 - i, K // 2 - j, H, W, T * D, D) * w[None, :]
    tl.store(DX + b * T * D + t[:, None] * D + d[None, :], acc.to(DX.dtype.element_ty),
             mask=mask_t[:, None] & mask_d[None, :])


def _grid(x: torch.Tensor) -> tuple[int, int, int]:
    B, T, D = x.shape
    return B, triton.cdiv(T, BT), triton.cdiv(D, BD)


@torch.library.custom_op("xlstm_kit::grid_conv_silu_fwd", mutates_args=())
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """y (B, T, D) contiguous, in x's dtype. Not exported: `grid_conv_silu_triton` is the entry point."""
    B, T, D = x.shape
    y = x.new_empty(B, T, D)
    _fwd_kernel[_grid(x)](x, weight, bias, y, T, height, width, D, x.stride(0), x.stride(1),
                          K=weight.shape[-1], BT=BT, BD=BD, num_warps=4)
    return y


@_forward.register_fake
def _(x, weight, bias, height, width):
    return x.new_empty(x.shape)


@torch.library.custom_op("xlstm_kit::grid_conv_silu_bwd", mutates_args=())
def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int,
              width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """dx (B, T, D) in x's dtype, and the fp32 parameter gradients stacked (K * K + 1, D): one row per tap
    (weight[:, 0, i, j] at row i * K + j), the bias last."""
    B, T, D = x.shape
    K = weight.shape[-1]
    grid = _grid(x)
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    du = x.new_empty(B, T, D, dtype=torch.float32)
    part = x.new_empty(B * grid[1], K * K + 1, D, dtype=torch.float32)
    _bwd_du_kernel[grid](x, weight, bias, dy, du, part, T, height, width, D, grid[1], x.stride(0), x.stride(1),
                         dy.stride(0), dy.stride(1), K=K, BT=BT, BD=BD, num_warps=4)
    dx = x.new_empty(B, T, D)
    _bwd_dx_kernel[grid](du, weight, dx, T, height, width, D, K=K, BT=BT, BD=BD, num_warps=4)
    return dx, part.sum(0)


@_backward.register_fake
def _(dy, x, weight, bias, height, width):
    D, K = x.shape[-1], weight.shape[-1]
    return x.new_empty(x.shape), x.new_empty(K * K + 1, D, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, height, width = inputs
    ctx.grid = (height, width)
    ctx.save_for_backward(x, weight, bias)


def _autograd_backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    dx, dparams = _backward(dy, x, weight, bias, *ctx.grid)
    dw = dparams[:-1].t().reshape(weight.shape)
    return dx, dw.to(weight.dtype), dparams[-1].to(bias.dtype), None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def grid_conv_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          grid: tuple[int, int]) -> torch.Tensor:
    """silu(depthwise conv) of x (B, T, D) on the (H, W) token grid; weight (D, 1, K, K), bias (D,); returns a
    contiguous (B, T, D) tensor in x's dtype. Shapes are checked by `xlstm_core.conv.grid_conv_silu`; here only a
    unit channel stride and contiguous parameters are ensured."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return _forward(x, weight.contiguous(), bias.contiguous(), int(grid[0]), int(grid[1]))


__all__ = ["grid_conv_silu_triton"]
