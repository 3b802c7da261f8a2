"""The residual stream's step between two pre-norm blocks in one Triton kernel each way:

    x_new = x + scale[b] * flip?(y)          (the block's output, DropPath's per-sample scale, its reading order)
    out   = flip?(layer_norm(x_new) * w + b) (the next block's input, in its reading order; optionally followed by
                                              columns of ones, the up-projection's bias column)

A bidirectional stack (ViL) reads every other block's tokens in reverse, so its x.flip(1) / .flip(1) around a block
become row indices here: the residual stream stays in token order. Inductor ran this as two kernels forward (the add
and the statistics, then the normalised output written again with the up-projection's ones columns) and two backward
plus the parameter-gradient sums: at ViL-T's shape on an H100 52.7 us forward against 40.4 here, at the bytes' floor,
and ViL-T / ViL-S train 1.6% / 1.9% faster with CUDA graphs (benchmarks/results/vil_ab_s25.json). Statistics in
fp32; mean and 1/std are kept for the backward, which reads x_new, the output's gradient and x_new's own gradient
once, writes x's and y's, and sums the weight and bias gradients over its rows in registers (one partial row per
program, summed by `column_sums`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from xlstm_core.column_sums_triton import column_sums

# (rows per step, steps per program, warps) of each kernel by width (the first bound at or above it), the fastest of an
# H100 sweep at ViL-T/S's residual streams (batch 256, 196 tokens, D = 192 / 384, bf16 y and out; GPU time per call
# with the backward's partial sums; benchmarks/results/vil_ab_s25.json): forward 41.0 / 79.6 us, backward 76.6 /
# 129.0 us. The backward at 192 re-swept with the sums in Triton (`python -m benchmarks.add_norm_tiles`, 60 configs,
# benchmarks/results/add_norm_tiles.json): 2 rows x 16 steps, 64.8 against 67.0 us for 4 x 16, and ViL-T trained
# 0.4% faster in an A/B (vil_ab_s27.json); at 384 the best, 122.4 against 123.7 us, is within the sweep's spread, so
# the pin stays. Wider streams keep the blocks' own adds and norms (`fits`): at ViL-B's 768 the best backward of the
# sweep (2 rows x 32 steps, 1 warp) took 161 us and spills under Triton 3.8 (504 bytes), and no A/B against
# inductor's kernels was run there.
TILES = ((256, {"fwd": (8, 1, 2), "bwd": (2, 16, 1)}), (512, {"fwd": (2, 1, 1), "bwd": (8, 1, 2)}))
MAX_ONES = 8


def fits(width: int) -> bool:
    """Whether residual streams of `width` features take the op (a row of them in one program)."""
    return width <= TILES[-1][0]


def _tiles(case: str, width: int) -> tuple[int, int, int]:
    return next(tiles[case] for bound, tiles in TILES if width <= bound)


@triton.jit
def _rows(start, N, T, BR: tl.constexpr):
    """Rows start .. start + BR of the (B * T, D) view, their mask and the rows of the same tokens read in reverse."""
    rows = start + tl.arange(0, BR)
    t = rows % T
    return rows, rows < N, rows - t + (T - 1 - t)


@triton.jit
def _fwd_kernel(X, Y, SCALE, W, BIAS, XN, OUT, MEAN, RSTD, N, T, D, OW, eps, HAS_Y: tl.constexpr,
                HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, FLIP_Y: tl.constexpr, FLIP_OUT: tl.constexpr,
                BR: tl.constexpr, BD: tl.constexpr):
    rows, mask_r, flipped = _rows(tl.program_id(0) * BR, N, T, BR)
    cols = tl.arange(0, BD)
    mask_c = cols < D
    mask = mask_r[:, None] & mask_c[None, :]
    x = tl.load(X + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_Y:
        y_rows = flipped if FLIP_Y else rows
        y = tl.load(Y + y_rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_SCALE:
            y *= tl.load(SCALE + rows // T, mask=mask_r, other=0.0).to(tl.float32)[:, None]
        x += y
        tl.store(XN + rows[:, None] * D + cols[None, :], x.to(XN.dtype.element_ty), mask=mask)
    mean = tl.sum(x, axis=1) / D
    centred = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / D + eps)
    out = centred * rstd[:, None] * tl.load(W + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        out += tl.load(BIAS + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
    out_rows = OUT + (flipped if FLIP_OUT else rows).to(tl.int64)[:, None] * OW
    tl.store(out_rows + cols[None, :], out.to(OUT.dtype.element_ty), mask=mask)
    ones = D + tl.arange(0, 8)
    tl.store(out_rows + ones[None, :], tl.full((BR, 8), 1.0, tl.float32).to(OUT.dtype.element_ty),
             mask=mask_r[:, None] & (ones < OW)[None, :])
    tl.store(MEAN + rows, mean, mask=mask_r)
    tl.store(RSTD + rows, rstd, mask=mask_r)


@triton.jit
def _bwd_kernel(G_XN, G_OUT, XN, MEAN, RSTD, W, SCALE, G_X, G_Y, PART, N, T, D, OW, HAS_G_XN: tl.constexpr,
                HAS_Y: tl.constexpr, HAS_SCALE: tl.constexpr, FLIP_Y: tl.constexpr, FLIP_OUT: tl.constexpr,
                BR: tl.constexpr, STEPS: tl.constexpr, BD: tl.constexpr):
    """x_new's whole gradient (its own plus the norm's) for STEPS * BR rows, written as x's (and, scaled, y's in y's
    order); the rows' sums of d out * xhat and d out (the weight's and bias's gradients) into PART[program]."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BD)
    mask_c = cols < D
    w = tl.load(W + cols, mask=mask_c, other=0.0).to(tl.float32)
    d_w = tl.zeros((BD,), dtype=tl.float32)
    d_b = tl.zeros((BD,), dtype=tl.float32)
    for step in range(STEPS):
        rows, mask_r, flipped = _rows((pid * STEPS + step) * BR, N, T, BR)
        mask = mask_r[:, None] & mask_c[None, :]
        out_rows = (flipped if FLIP_OUT else rows).to(tl.int64)
        g_out = tl.load(G_OUT + out_rows[:, None] * OW + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(MEAN + rows, mask=mask_r, other=0.0)
        rstd = tl.load(RSTD + rows, mask=mask_r, other=0.0)
        x = tl.load(XN + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        d_xhat = g_out * w[None, :]
        g = rstd[:, None] * (d_xhat - (tl.sum(d_xhat, axis=1) / D)[:, None]
                             - xhat * (tl.sum(d_xhat * xhat, axis=1) / D)[:, None])
        if HAS_G_XN:
            g += tl.load(G_XN + rows[:, None] * D + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(G_X + rows[:, None] * D + cols[None, :], g.to(G_X.dtype.element_ty), mask=mask)
        if HAS_Y:
            if HAS_SCALE:
                g *= tl.load(SCALE + rows // T, mask=mask_r, other=0.0).to(tl.float32)[:, None]
            y_rows = flipped if FLIP_Y else rows
            tl.store(G_Y + y_rows[:, None] * D + cols[None, :], g.to(G_Y.dtype.element_ty), mask=mask)
        d_w += tl.sum(g_out * xhat, axis=0)
        d_b += tl.sum(g_out, axis=0)
    tl.store(PART + pid * 2 * D + cols, d_w, mask=mask_c)
    tl.store(PART + pid * 2 * D + D + cols, d_b, mask=mask_c)


@torch.library.custom_op("xlstm_kit::add_norm_fwd", mutates_args=())
def _forward(x: torch.Tensor, y: torch.Tensor | None, scale: torch.Tensor | None, weight: torch.Tensor,
             bias: torch.Tensor | None, eps: float, flip_y: bool, flip_out: bool, ones: int,
             out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x_new (B, T, D; empty without y: x_new is x), out (B, T, D + ones) in out_dtype, and the rows' fp32 mean and
    1/std (B * T,). Not exported: `add_norm` is the entry point."""
    B, T, D = x.shape
    N = B * T
    x_new = torch.empty_like(x) if y is not None else x.new_empty(0)
    out = x.new_empty(B, T, D + ones, dtype=out_dtype)
    mean, rstd = (x.new_empty(N, dtype=torch.float32) for _ in range(2))
    br, _, warps = _tiles("fwd", D)
    _fwd_kernel[(triton.cdiv(N, br),)](
        x, x if y is None else y, x if scale is None else scale, weight, weight if bias is None else bias,
        x_new, out, mean, rstd, N, T, D, D + ones, eps, HAS_Y=y is not None, HAS_SCALE=scale is not None,
        HAS_BIAS=bias is not None, FLIP_Y=flip_y, FLIP_OUT=flip_out, BR=br, BD=triton.next_power_of_2(D),
        num_warps=warps)
    return x_new, out, mean, rstd


@_forward.register_fake
def _(x, y, scale, weight, bias, eps, flip_y, flip_out, ones, out_dtype):
    B, T, D = x.shape
    row = lambda: x.new_empty(B * T, dtype=torch.float32)
    return (torch.empty_like(x) if y is not None else x.new_empty(0), x.new_empty(B, T, D + ones, dtype=out_dtype),
            row(), row())


@torch.library.custom_op("xlstm_kit::add_norm_bwd", mutates_args=())
def _backward(g_x_new: torch.Tensor | None, g_out: torch.Tensor, x_new: torch.Tensor, mean: torch.Tensor,
              rstd: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, has_y: bool,
              y_dtype: torch.dtype, flip_y: bool, flip_out: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """d x (x_new's dtype), d y (y_dtype; empty without y) and the fp32 weight and bias gradients stacked (2, D)."""
    B, T, D = x_new.shape
    N = B * T
    g_out = g_out.contiguous()
    g_x = torch.empty_like(x_new)
    g_y = x_new.new_empty(B, T, D, dtype=y_dtype) if has_y else x_new.new_empty(0)
    br, steps, warps = _tiles("bwd", D)
    programs = triton.cdiv(N, br * steps)
    part = x_new.new_empty(programs, 2, D, dtype=torch.float32)
    _bwd_kernel[(programs,)](
        g_out if g_x_new is None else g_x_new, g_out, x_new, mean, rstd, weight, x_new if scale is None else scale,
        g_x, g_y, part, N, T, D, g_out.shape[-1], HAS_G_XN=g_x_new is not None, HAS_Y=has_y,
        HAS_SCALE=scale is not None, FLIP_Y=flip_y, FLIP_OUT=flip_out, BR=br, STEPS=steps,
        BD=triton.next_power_of_2(D), num_warps=warps)
    return g_x, g_y, column_sums(part.view(programs, 2 * D)).view(2, D)


@_backward.register_fake
def _(g_x_new, g_out, x_new, mean, rstd, weight, scale, has_y, y_dtype, flip_y, flip_out):
    B, T, D = x_new.shape
    return (torch.empty_like(x_new), x_new.new_empty(B, T, D, dtype=y_dtype) if has_y else x_new.new_empty(0),
            x_new.new_empty(2, D, dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, y, scale, weight, bias, _, flip_y, flip_out, _, _ = inputs
    x_new, _, mean, rstd = output
    ctx.set_materialize_grads(False)  # x_new's gradient is None where nothing reads it (before the final norm)
    ctx.has_y, ctx.flip_y, ctx.flip_out, ctx.has_bias = y is not None, flip_y, flip_out, bias is not None
    ctx.y_dtype = x.dtype if y is None else y.dtype
    ctx.save_for_backward(x_new if y is not None else x, mean, rstd, weight, scale)


def _autograd_backward(ctx, g_x_new, g_out, *_):
    x_new, mean, rstd, weight, scale = ctx.saved_tensors
    g_x, g_y, params = _backward(g_x_new, g_out, x_new, mean, rstd, weight, scale, ctx.has_y, ctx.y_dtype,
                                 ctx.flip_y, ctx.flip_out)
    d_weight, d_bias = params.to(weight.dtype).unbind(0)
    return (g_x, g_y if ctx.has_y else None, None, d_weight, d_bias if ctx.has_bias else None, *[None] * 5)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def add_norm(x: torch.Tensor, y: torch.Tensor | None, weight: torch.Tensor, bias: torch.Tensor | None, eps: float, *,
             flip_y: bool = False, flip_out: bool = False, ones: int = 0, scale: torch.Tensor | None = None,
             out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_new, out) for the residual stream x (B, T, D), a block's output y (B, T, D; None: x_new = x) read in
    reverse token order with `flip_y`, DropPath's per-sample `scale` (B,) on y, and the LayerNorm (weight, bias,
    eps) of x_new written in reverse token order with `flip_out`, followed by `ones` columns of ones (at most 8),
    in out_dtype (default x's). Differentiable in x, y, weight and bias."""
    if x.ndim != 3 or not x.is_floating_point():
        raise ValueError(f"expected a floating-point residual stream (B, T, D), got {tuple(x.shape)} {x.dtype}")
    B, T, D = x.shape
    if y is not None and y.shape != x.shape:
        raise ValueError(f"y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    if weight.shape != (D,) or (bias is not None and bias.shape != (D,)):
        raise ValueError(f"weight and bias must be ({D},) vectors")
    if scale is not None and scale.shape != (B,):
        raise ValueError(f"scale must hold one value per sample ({B},), got {tuple(scale.shape)}")
    if not 0 <= ones <= MAX_ONES:
        raise ValueError(f"ones must be between 0 and {MAX_ONES}, got {ones}")
    if not fits(D):
        raise ValueError(f"the fused add + norm takes at most {TILES[-1][0]} features, got {D}")
    x, y, scale = (None if t is None else t.contiguous() for t in (x, y, scale))
    x_new, out, _, _ = _forward(x, y, scale, weight.contiguous(), None if bias is None else bias.contiguous(),
                                float(eps), flip_y, flip_out, ones, out_dtype or x.dtype)
    return (x if y is None else x_new), out


__all__ = ["add_norm"]
