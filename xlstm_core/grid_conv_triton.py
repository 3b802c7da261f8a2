"""Depthwise k x k conv (+ SiLU) on a token grid in Triton, read in the token layout: inference and training.

    u = depthwise_conv2d(x on an (H, W) grid, weight) + bias,   y = silu(u),   x, u, y: (B, T = H * W, D)

PyTorch runs this as three passes on ViL's layout: a copy of x into channels-last (the layer's x is a chunk of the
up-projection), cuDNN's depthwise kernel and the SiLU. Here one program takes BT consecutive tokens and BD channels
of one image and sums the k * k shifted tiles of x (zero outside the grid) in fp32: one read of x (the shifted tiles
hit the cache) and one write.
- Inference (`grid_conv_silu_triton`): y in one pass.
- Training (`grid_conv_triton`, 3 x 3 kernels): u as an autograd op, the SiLU left to the caller (inductor fuses its
  backward with the sum of u's gradient sources), and a backward of two kernels that read x where it lies: du
  through the flipped taps, and per image the nine tap sums and the bias sum, reduced over the batch. No dense copy of
  x is made (PyTorch's path copies it for cuDNN and keeps the copy for the weight gradient). A session-8 backward
  that recomputed u and fused the SiLU's backward was slower than cuDNN's; this one is measured in
  benchmarks/notes/vil_speed.md.
- The fused mixer op (xlstm_core/mixer_triton.py, through xlstm_core/conv_qk_triton.py) takes the kernels' pieces:
  dx written into a column slice of a wider tensor (`_dgrad_into`), the weight and bias sums (`_weight_grads`) and
  the launch split of token ranges (`_token_splits`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlstm_core.column_sums_triton import column_sums

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
def _stencil_kernel(X, WT, BIAS, Y, T, H, W, D, sx_b, sx_t, sy_b, sy_t, K: tl.constexpr, BT: tl.constexpr,
                    BD: tl.constexpr, SILU: tl.constexpr, FLIP: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The forward u = bias + sum over the k x k taps of weight[d, i, j] * x[row + i - k // 2, col + j - k // 2]
    (y = silu(u) with SILU), or with FLIP the backward's dx = sum over the taps of weight[d, i, j] * du[row - i +
    k // 2, col - j + k // 2], for BT tokens (grid row and column from the token index) and BD channels of one image.
    Y is written through its image and token strides."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    row, col, mask_t, mask_d = t // W, t % W, t < T, d < D
    sign: tl.constexpr = -1 if FLIP else 1
    u = tl.zeros((BT, BD), dtype=tl.float32)
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            w = tl.load(WT + d * (K * K) + i * K + j, mask=mask_d, other=0.0).to(tl.float32)
            tile = _shifted(X, b, row, col, d, mask_t, mask_d, sign * (i - K // 2), sign * (j - K // 2), H, W, sx_b,
                            sx_t)
            u += tile * w[None, :]
    if HAS_BIAS:
        u += tl.load(BIAS + d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    if SILU:
        u = u * tl.sigmoid(u)
    tl.store(Y + b * sy_b + t[:, None] * sy_t + d[None, :], u.to(Y.dtype.element_ty),
             mask=mask_t[:, None] & mask_d[None, :])


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int, width: int,
          silu: bool) -> torch.Tensor:
    """u or silu(u), (B, T, D) contiguous in x's dtype."""
    B, T, D = x.shape
    y = x.new_empty(B, T, D)
    _stencil_kernel[(B, triton.cdiv(T, BT), triton.cdiv(D, BD))](
        x, weight, bias, y, T, height, width, D, x.stride(0), x.stride(1), T * D, D, K=weight.shape[-1], BT=BT,
        BD=BD, SILU=silu, FLIP=False, HAS_BIAS=True, num_warps=WARPS)
    return y


@torch.library.custom_op("xlstm_kit::grid_conv_silu", mutates_args=())
def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """y (B, T, D) contiguous, in x's dtype. Not exported: `grid_conv_silu_triton` is the entry point."""
    return _conv(x, weight, bias, height, width, True)


@_forward.register_fake
def _(x, weight, bias, height, width):
    return x.new_empty(x.shape)


@triton.jit
def _tap_sum(g, X, b, row, col, d, mask_t, mask_d, di: tl.constexpr, dj: tl.constexpr, H, W, sx_b, sx_t):
    return tl.sum(g * _shifted(X, b, row, col, d, mask_t, mask_d, di, dj, H, W, sx_b, sx_t), axis=0)


@triton.jit
def _wgrad_kernel(G, X, PART, T, H, W, D, sx_b, sx_t, SPAN, BT: tl.constexpr, BD: tl.constexpr):
    """For one image, SPAN of its tokens and BD channels of a 3 x 3 conv: PART[b, split, 3 i + j, d] = sum_t g[t, d]
    x[t shifted by (i - 1, j - 1), d] and PART[b, split, 9, d] = sum_t g[t, d] (the bias gradient). g is read once
    per token block, into nine accumulators."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    split = tl.program_id(2)
    mask_d = d < D
    gsum = tl.zeros((BD,), dtype=tl.float32)
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = gsum, gsum, gsum, gsum, gsum, gsum, gsum, gsum, gsum
    t_end = tl.minimum(T, (split + 1) * SPAN)
    for t0 in range(split * SPAN, t_end, BT):
        t = t0 + tl.arange(0, BT)
        row, col, mask_t = t // W, t % W, t < t_end
        g = tl.load(G + b * T * D + t[:, None] * D + d[None, :], mask=mask_t[:, None] & mask_d[None, :],
                    other=0.0).to(tl.float32)
        tap = (g, X, b, row, col, d, mask_t, mask_d)
        a0 += _tap_sum(*tap, -1, -1, H, W, sx_b, sx_t)
        a1 += _tap_sum(*tap, -1, 0, H, W, sx_b, sx_t)
        a2 += _tap_sum(*tap, -1, 1, H, W, sx_b, sx_t)
        a3 += _tap_sum(*tap, 0, -1, H, W, sx_b, sx_t)
        a4 += _tap_sum(*tap, 0, 0, H, W, sx_b, sx_t)
        a5 += _tap_sum(*tap, 0, 1, H, W, sx_b, sx_t)
        a6 += _tap_sum(*tap, 1, -1, H, W, sx_b, sx_t)
        a7 += _tap_sum(*tap, 1, 0, H, W, sx_b, sx_t)
        a8 += _tap_sum(*tap, 1, 1, H, W, sx_b, sx_t)
        gsum += tl.sum(g, axis=0)
    part = PART + (b.to(tl.int64) * tl.num_programs(2) + split) * 10 * D + d
    tl.store(part, a0, mask=mask_d)
    tl.store(part + D, a1, mask=mask_d)
    tl.store(part + 2 * D, a2, mask=mask_d)
    tl.store(part + 3 * D, a3, mask=mask_d)
    tl.store(part + 4 * D, a4, mask=mask_d)
    tl.store(part + 5 * D, a5, mask=mask_d)
    tl.store(part + 6 * D, a6, mask=mask_d)
    tl.store(part + 7 * D, a7, mask=mask_d)
    tl.store(part + 8 * D, a8, mask=mask_d)
    tl.store(part + 9 * D, gsum, mask=mask_d)


# Backward tiles (tokens, channels, warps), the fastest of an H100 probe at ViL-T's shape (batch 256, 14 x 14, 384
# channels, bf16, x a strided slice of a 1,216-wide tensor; session 17): timed alone, dx 0.053 ms against cuDNN's
# 0.061 and the weight and bias sums 0.069 ms (with the batch reduction) against cuDNN's 0.120; in the compiled ViL-T
# training step 0.041 and 0.065 ms per block.
DGRAD_TILES, WGRAD_TILES = (8, 64, 1), (8, 128, 1)
# The weight-gradient launch aims at this many programs per SM: with few images (1024^2 inputs at batch 8: 24
# programs of 4,096 tokens) each image's tokens are split among several programs. Over WIDE_WGRAD_CHANNELS channels
# the conv's weight sums aim at WIDE_WGRAD_PROGRAMS_PER_SM: ViL-S's and ViL-B's 768 / 1,536 channels (1,536
# programs) then split each image in two, 113.7 / 113.0 against 131.0 us per call with the batch reduction, while
# ViL-T's 384 (768 programs) is fastest unsplit, 67.4 against 71.6-73.0 us split (`python -m
# benchmarks.grid_conv_wgrad_tiles`, 81 configs per size, benchmarks/results/grid_conv_wgrad_tiles.json).
WGRAD_PROGRAMS_PER_SM = 4
WIDE_WGRAD_CHANNELS, WIDE_WGRAD_PROGRAMS_PER_SM = 384, 16


def _token_splits(programs: int, T: int, bt: int, device: torch.device, per_sm: int, min_blocks: int = 8) -> int:
    """Programs per range of T tokens (each at least `min_blocks` blocks of bt tokens) that bring a launch of
    `programs` ranges near `per_sm` programs per SM (132 SMs assumed off the GPU)."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 132
    return max(1, min(triton.cdiv(per_sm * sms, programs), T // (min_blocks * bt)))


@torch.library.custom_op("xlstm_kit::grid_conv_fwd", mutates_args=())
def _train_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, height: int,
                   width: int) -> torch.Tensor:
    """u (B, T, D) contiguous, in x's dtype. Not exported: `grid_conv_triton` is the entry point."""
    return _conv(x, weight, bias, height, width, False)


@_train_forward.register_fake
def _(x, weight, bias, height, width):
    return x.new_empty(x.shape)


def _dgrad_into(du: torch.Tensor, weight: torch.Tensor, height: int, width: int, dx: torch.Tensor) -> None:
    """dx (B, T, D; any image and token strides, unit channel stride) from the dense gradient du of u."""
    B, T, D = du.shape
    bt, bd, warps = DGRAD_TILES
    _stencil_kernel[(B, triton.cdiv(T, bt), triton.cdiv(D, bd))](
        du, weight, weight, dx, T, height, width, D, T * D, D, dx.stride(0), dx.stride(1), K=3, BT=bt, BD=bd,
        SILU=False, FLIP=True, HAS_BIAS=False, num_warps=warps)


def _weight_grads(du: torch.Tensor, x: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d weight (D, 1, 3, 3) and d bias (D,) in fp32 from the dense gradient du of u and the conv's input x."""
    B, T, D = x.shape
    bt, bd, warps = WGRAD_TILES
    per_sm = WIDE_WGRAD_PROGRAMS_PER_SM if D > WIDE_WGRAD_CHANNELS else WGRAD_PROGRAMS_PER_SM
    splits = _token_splits(B * triton.cdiv(D, bd), T, bt, x.device, per_sm)
    span = triton.cdiv(triton.cdiv(T, splits), bt) * bt
    part = torch.empty(B, splits, 10, D, device=x.device, dtype=torch.float32)
    _wgrad_kernel[(B, triton.cdiv(D, bd), splits)](du, x, part, T, height, width, D, x.stride(0), x.stride(1), span,
                                                   BT=bt, BD=bd, num_warps=warps)
    sums = column_sums(part.view(B * splits, 10 * D)).view(10, D)
    return sums[:9].t().reshape(D, 1, 3, 3).contiguous(), sums[9].contiguous()


@torch.library.custom_op("xlstm_kit::grid_conv_bwd", mutates_args=())
def _train_backward(du: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, height: int,
                    width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dx (B, T, D) in x's dtype, d weight (D, 1, 3, 3) and d bias (D,) in fp32."""
    du = du.contiguous()
    dx = x.new_empty(x.shape)
    _dgrad_into(du, weight, height, width, dx)
    return (dx, *_weight_grads(du, x, height, width))


@_train_backward.register_fake
def _(du, x, weight, height, width):
    D = x.shape[-1]
    return (x.new_empty(x.shape), x.new_empty(D, 1, 3, 3, dtype=torch.float32),
            x.new_empty(D, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, weight, bias, ctx.height, ctx.width = inputs
    ctx.save_for_backward(x, weight)
    ctx.dtypes = (weight.dtype, bias.dtype)


def _autograd_backward(ctx, du):
    x, weight = ctx.saved_tensors
    dx, dw, db = _train_backward(du, x, weight, ctx.height, ctx.width)
    return dx, dw.to(ctx.dtypes[0]), db.to(ctx.dtypes[1]), None, None


_train_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def grid_conv_silu_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          grid: tuple[int, int]) -> torch.Tensor:
    """silu(depthwise conv) of x (B, T, D) on the (H, W) token grid; weight (D, 1, K, K), bias (D,); returns a
    contiguous (B, T, D) tensor in x's dtype, without a graph for autograd. Shapes are checked by
    `GridConv2d.conv_silu`; here only a unit channel stride and contiguous parameters are ensured."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return _forward(x, weight.contiguous(), bias.contiguous(), int(grid[0]), int(grid[1]))


def grid_conv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     grid: tuple[int, int]) -> torch.Tensor:
    """The depthwise 3 x 3 conv (no SiLU) of x (B, T, D) on the (H, W) token grid, differentiable in x, weight (D,
    1, 3, 3) and bias (D,); returns a contiguous (B, T, D) tensor in x's dtype. x is read through its token and
    image strides (a strided slice of the up-projection stays where it is)."""
    if weight.shape[-2:] != (3, 3):
        raise ValueError(f"the Triton training conv takes 3 x 3 kernels, got {tuple(weight.shape[-2:])}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    return _train_forward(x, weight.contiguous(), bias.contiguous(), int(grid[0]), int(grid[1]))


__all__ = ["grid_conv_silu_triton", "grid_conv_triton"]
