"""Fused output chain of the pre-up mLSTM layer in Triton: per-head layer norm, learnable skip, SiLU output gate.

    y = (layernorm_per_head(h) * w [+ b] + skip * x_skip) * silu(z)

Forward and backward each read their inputs once and write their outputs once (bf16 in, fp32 statistics and
arithmetic, outputs in the inputs' dtypes); the PyTorch chain runs ~8 kernels forward and ~15 backward with fp32
intermediates. One program takes a few tokens (TILES) of one image and one head, whose DH features it holds as two
power-of-two parts (96 = 64 + 32) so that no lane works on padding; a backward program may walk several such blocks.
The backward recomputes the statistics from h instead of storing them, and writes per-program partial sums of the
three per-feature parameter gradients, which `column_sums` reduces.

Every tensor is addressed through (batch, token, feature) strides, so the layer's views are read as they are: z, a
chunk of the up-projection (token stride 2 * inner), and x_skip, which the depthwise grid conv leaves channel-major.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.mlstm.parallel_triton import head_parts
from xlstm_core.column_sums_triton import column_sums

# Tokens per program (the forward) or per block (the backward), the backward's blocks per program, and warps, by
# head width (the first bound at or above the two parts' sum), from H100 sweeps at ViL-T/S/B's heads (96, 192, 384;
# batch 256/256/128, 196 tokens, bf16, z in the up-projection's layout; `python -m benchmarks.norm_gate_tiles --shape
# ...`, sessions 20 and 26, benchmarks/results/norm_gate_parts_s20.json and vil_ab_s26.json; GPU time per op
# from CUDA-graph replays). A backward program (one warp) holds ~1.5K features per block (16 x 96, 8 x 192, 4 x 384);
# wider ones spill (16 x 384 took 2.4 ms). Widths between and beyond those three were not swept: they take the next
# row, i.e. at most that many features per warp (the last row extends the rule to 2 x 768). Against the kernels
# before, which padded a head to a power of two (96 -> 128 lanes) and took one pin for all widths, forward /
# backward per op went 0.060 / 0.190 -> 0.059 / 0.161 (ViL-T), 0.135 / 0.506 -> 0.111 / 0.352 (ViL-S) and 0.152 /
# 0.972 -> 0.108 / 0.337 ms (ViL-B). Session 26, the backward with blocks per program: at ViL-S 0.351 -> 0.317 ms
# at the same tile (the kernel's new form alone; the cause was not isolated), at ViL-B 0.337 -> 0.310 (25 blocks of
# 2 tokens per program, 13x fewer partial sums); ViL-T's unchanged (0.160; several blocks per program lost there,
# 0.174 ms at best). Session 29, with the partial sums reduced in Triton: re-swept at ViL-T's and ViL-S's heads (40
# configs each; norm_gate_bwd_sweep_s29.json, norm_gate_bwd_sweep_small_s29.json), both pins still the fastest
# (0.155 and 0.311 ms; the next 0.161 and 0.314).
TILES = ((96, {"fwd": (8, 2), "bwd": (16, 1, 1)}), (192, {"fwd": (4, 2), "bwd": (8, 1, 1)}),
         (384, {"fwd": (4, 4), "bwd": (2, 25, 1)}), (1 << 30, {"fwd": (4, 4), "bwd": (2, 1, 1)}))


@triton.jit
def _load(ptr, b, t, f, mask, s_b, s_t, s_f):
    return tl.load(ptr + b * s_b + t[:, None] * s_t + f[None, :] * s_f, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _tile_coords(T, BLOCK: tl.constexpr):
    """This program's batch row, token block, head and tokens t."""
    b, tb, hd = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    return b, tb, hd, tb * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _features(hd, DH, OFF: tl.constexpr, X: tl.constexpr):
    """Features [OFF, OFF + X) of head hd (`kernels.mlstm.parallel_triton.head_parts`: 96 = 64 + 32, so no lane
    works on padding) and their mask."""
    d = OFF + tl.arange(0, X)
    return hd * DH + d, d < DH


@triton.jit
def _part(t, T, hd, DH, OFF: tl.constexpr, X: tl.constexpr):
    """A part's features (`_features`), their mask and the mask of its tile at tokens t."""
    f, mask_d = _features(hd, DH, OFF, X)
    return f, mask_d, (t < T)[:, None] & mask_d[None, :]


@triton.jit
def _normalise(h1, h2, mask1, mask2, DH, eps):
    """(h - mean) / sqrt(var + eps) over each row's DH valid features, held as two parts (masked entries stay 0)."""
    mean = (tl.sum(h1, axis=1) + tl.sum(h2, axis=1)) / DH
    c1 = tl.where(mask1, h1 - mean[:, None], 0.0)
    c2 = tl.where(mask2, h2 - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt((tl.sum(c1 * c1, axis=1) + tl.sum(c2 * c2, axis=1)) / DH + eps)
    return c1 * rstd[:, None], c2 * rstd[:, None], rstd


@triton.jit
def _gate_inputs(XS, Z, W, BIAS, SKIP, b, t, f, mask_d, mask, sx_b, sx_t, sx_f, sz_b, sz_t, HAS_BIAS: tl.constexpr):
    """One part's x_skip and z tiles and its w, skip and bias (0 without one) in fp32. The kernels load both parts'
    inputs before either part stores: loads placed after a store stay after it (the pointers may alias), and with
    part 2's loads behind part 1's stores the forward took 0.065 against 0.059 ms at ViL-T's shape."""
    xs = _load(XS, b, t, f, mask, sx_b, sx_t, sx_f)
    z = _load(Z, b, t, f, mask, sz_b, sz_t, 1)
    w = tl.load(W + f, mask=mask_d, other=0.0).to(tl.float32)
    skip = tl.load(SKIP + f, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + f, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros_like(w)
    return xs, z, w, skip, bias


@triton.jit
def _pre_gate(xhat, xs, w, skip, bias):
    """xhat w + bias + skip x_skip: the forward's value before the gate, recomputed by the backward."""
    return xhat * w[None, :] + bias[None, :] + skip[None, :] * xs


@triton.jit
def _fwd_kernel(H, XS, Z, W, BIAS, SKIP, Y, T, DH, eps, sh_b, sh_t, sx_b, sx_t, sx_f, sz_b, sz_t, sy_b, sy_t,
                HAS_BIAS: tl.constexpr, XA: tl.constexpr, XB: tl.constexpr, BLOCK: tl.constexpr):
    b, _, hd, t = _tile_coords(T, BLOCK)
    f1, mask_d1, mask1 = _part(t, T, hd, DH, 0, XA)
    f2, mask_d2, mask2 = _part(t, T, hd, DH, XA, XB)
    h1, h2 = _load(H, b, t, f1, mask1, sh_b, sh_t, 1), _load(H, b, t, f2, mask2, sh_b, sh_t, 1)
    strides = (sx_b, sx_t, sx_f, sz_b, sz_t)
    xs1, z1, w1, skip1, bias1 = _gate_inputs(XS, Z, W, BIAS, SKIP, b, t, f1, mask_d1, mask1, *strides, HAS_BIAS)
    xs2, z2, w2, skip2, bias2 = _gate_inputs(XS, Z, W, BIAS, SKIP, b, t, f2, mask_d2, mask2, *strides, HAS_BIAS)
    xhat1, xhat2, _ = _normalise(h1, h2, mask1, mask2, DH, eps)
    y = Y + b * sy_b + t[:, None] * sy_t
    y1 = _pre_gate(xhat1, xs1, w1, skip1, bias1) * z1 * tl.sigmoid(z1)
    y2 = _pre_gate(xhat2, xs2, w2, skip2, bias2) * z2 * tl.sigmoid(z2)
    tl.store(y + f1[None, :], y1.to(Y.dtype.element_ty), mask=mask1)
    tl.store(y + f2[None, :], y2.to(Y.dtype.element_ty), mask=mask2)


@triton.jit
def _bwd_gate(xhat, xs, z, w, skip, bias, dy, DXS, DZ, b, t, f, mask, out, sdz_b, sdz_t):
    """One part's gradients through the gate and the skip (dz and d x_skip stored); returns d xhat and the part's
    column sums of the three parameter gradients' terms (weight, skip, bias)."""
    sig = tl.sigmoid(z)
    dpre = dy * z * sig
    dz = dy * _pre_gate(xhat, xs, w, skip, bias) * sig * (1.0 + z * (1.0 - sig))
    tl.store(DZ + b * sdz_b + t[:, None] * sdz_t + f[None, :], dz.to(DZ.dtype.element_ty), mask=mask)
    tl.store(DXS + out + f[None, :], (dpre * skip[None, :]).to(DXS.dtype.element_ty), mask=mask)
    return dpre * w[None, :], tl.sum(dpre * xhat, axis=0), tl.sum(dpre * xs, axis=0), tl.sum(dpre, axis=0)


@triton.jit
def _store_sums(ptr, f, mask_d, s_w, s_skip, s_b, rows):
    """A part's three column sums (weight, skip, bias) at features f of a program's partial-sum rows."""
    tl.store(ptr + f, s_w, mask=mask_d)
    tl.store(ptr + rows + f, s_skip, mask=mask_d)
    tl.store(ptr + 2 * rows + f, s_b, mask=mask_d)


@triton.jit
def _bwd_kernel(DY, H, XS, Z, W, BIAS, SKIP, DH_OUT, DXS, DZ, PART, T, DH, INNER, eps, sdy_b, sdy_t, sh_b, sh_t,
                sx_b, sx_t, sx_f, sz_b, sz_t, sdz_b, sdz_t, HAS_BIAS: tl.constexpr, XA: tl.constexpr,
                XB: tl.constexpr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    """STEPS blocks of BLOCK tokens of one image and head; the parameter gradients' sums over them go to PART
    (3, B * programs per image, inner) as weight, skip, bias. With one block per program each part's sums are stored
    as soon as it has them: held to the end, as the loop holds them, they took ViL-T's op (16 tokens per program)
    from 0.160 to 0.198 ms (H100, Triton 3.6)."""
    b, tb, hd = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    strides = (sx_b, sx_t, sx_f, sz_b, sz_t)
    part = PART + (b * tl.num_programs(1) + tb) * INNER
    rows = INNER * tl.num_programs(0) * tl.num_programs(1)
    d_w1, d_skip1, d_b1 = tl.zeros((XA,), tl.float32), tl.zeros((XA,), tl.float32), tl.zeros((XA,), tl.float32)
    d_w2, d_skip2, d_b2 = tl.zeros((XB,), tl.float32), tl.zeros((XB,), tl.float32), tl.zeros((XB,), tl.float32)
    f1, mask_d1 = _features(hd, DH, 0, XA)
    f2, mask_d2 = _features(hd, DH, XA, XB)
    for step in range(STEPS):
        t = (tb * STEPS + step) * BLOCK + tl.arange(0, BLOCK)
        mask1, mask2 = (t < T)[:, None] & mask_d1[None, :], (t < T)[:, None] & mask_d2[None, :]
        h1, h2 = _load(H, b, t, f1, mask1, sh_b, sh_t, 1), _load(H, b, t, f2, mask2, sh_b, sh_t, 1)
        xs1, z1, w1, skip1, bias1 = _gate_inputs(XS, Z, W, BIAS, SKIP, b, t, f1, mask_d1, mask1, *strides, HAS_BIAS)
        xs2, z2, w2, skip2, bias2 = _gate_inputs(XS, Z, W, BIAS, SKIP, b, t, f2, mask_d2, mask2, *strides, HAS_BIAS)
        dy1, dy2 = _load(DY, b, t, f1, mask1, sdy_b, sdy_t, 1), _load(DY, b, t, f2, mask2, sdy_b, sdy_t, 1)
        xhat1, xhat2, rstd = _normalise(h1, h2, mask1, mask2, DH, eps)
        out = b * T * INNER + t[:, None] * INNER  # dh and d x_skip are stored (B, T, inner)
        dxhat1, s_w1, s_skip1, s_b1 = _bwd_gate(xhat1, xs1, z1, w1, skip1, bias1, dy1, DXS, DZ, b, t, f1, mask1, out,
                                                sdz_b, sdz_t)
        if STEPS == 1:
            _store_sums(part, f1, mask_d1, s_w1, s_skip1, s_b1, rows)
        dxhat2, s_w2, s_skip2, s_b2 = _bwd_gate(xhat2, xs2, z2, w2, skip2, bias2, dy2, DXS, DZ, b, t, f2, mask2, out,
                                                sdz_b, sdz_t)
        if STEPS == 1:
            _store_sums(part, f2, mask_d2, s_w2, s_skip2, s_b2, rows)
        else:
            d_w1, d_skip1, d_b1 = d_w1 + s_w1, d_skip1 + s_skip1, d_b1 + s_b1
            d_w2, d_skip2, d_b2 = d_w2 + s_w2, d_skip2 + s_skip2, d_b2 + s_b2
        mean_dxhat = (tl.sum(dxhat1, axis=1) + tl.sum(dxhat2, axis=1)) / DH
        mean_dxhat_xhat = (tl.sum(dxhat1 * xhat1, axis=1) + tl.sum(dxhat2 * xhat2, axis=1)) / DH
        dh1 = rstd[:, None] * (dxhat1 - mean_dxhat[:, None] - xhat1 * mean_dxhat_xhat[:, None])
        dh2 = rstd[:, None] * (dxhat2 - mean_dxhat[:, None] - xhat2 * mean_dxhat_xhat[:, None])
        tl.store(DH_OUT + out + f1[None, :], dh1.to(DH_OUT.dtype.element_ty), mask=mask1)
        tl.store(DH_OUT + out + f2[None, :], dh2.to(DH_OUT.dtype.element_ty), mask=mask2)
    if STEPS > 1:
        _store_sums(part, f1, mask_d1, d_w1, d_skip1, d_b1, rows)
        _store_sums(part, f2, mask_d2, d_w2, d_skip2, d_b2, rows)


def _grid(h: torch.Tensor, block: int, steps: int = 1) -> tuple[int, int, int]:
    B, T, NH, _ = h.shape
    return B, triton.cdiv(triton.cdiv(T, block), steps), NH


def tiles(case: str, dh: int) -> tuple[int, ...]:
    """The TILES entry of `case` ("fwd" or "bwd") for heads of dh features: the row of their two parts' width."""
    return next(row[case] for bound, row in TILES if sum(head_parts(dh, dh)) <= bound)


def _launch(case: str, dh: int) -> dict[str, int]:
    """Kernel arguments of a launch: the head's two feature parts (XA, XB), tokens per block, the backward's blocks
    per program (STEPS) and warps."""
    xa, xb = head_parts(dh, dh)
    *sizes, warps = tiles(case, dh)
    return dict(XA=xa, XB=xb, BLOCK=sizes[0], num_warps=warps) | (dict(STEPS=sizes[1]) if case == "bwd" else {})


@torch.library.custom_op("xlstm_kit::norm_skip_gate_fwd", mutates_args=())
def _forward(h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, skip: torch.Tensor, eps: float) -> torch.Tensor:
    """y (B, T, NH * DH) in h's dtype. Not exported: `norm_skip_gate_triton` is the entry point."""
    B, T, NH, DH = h.shape
    y = h.new_empty(B, T, NH * DH)
    launch = _launch("fwd", DH)
    _fwd_kernel[_grid(h, launch["BLOCK"])](h, x_skip, z, weight, bias, skip, y, T, DH, eps, h.stride(0), h.stride(1),
                                           *x_skip.stride(), z.stride(0), z.stride(1), y.stride(0), y.stride(1),
                                           HAS_BIAS=bias is not None, **launch)
    return y


@_forward.register_fake
def _(h, x_skip, z, weight, bias, skip, eps):
    B, T, NH, DH = h.shape
    return h.new_empty(B, T, NH * DH)


def backward_into(dy: torch.Tensor, h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None, skip: torch.Tensor, eps: float, dz: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chain's backward with dz written into `dz` (B, T, NH * DH; any batch and token strides, e.g. a column slice
    of the up-projection's gradient); returns dh (B, T, NH, DH), d x_skip (B, T, NH * DH) and the fp32 parameter
    gradients stacked (3, NH * DH) as weight, skip, bias."""
    B, T, NH, DH = h.shape
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    launch = _launch("bwd", DH)
    grid = _grid(h, launch["BLOCK"], launch["STEPS"])
    dh = torch.empty_like(h, memory_format=torch.contiguous_format)
    dxs = x_skip.new_empty(B, T, NH * DH)
    part = h.new_empty(3, B * grid[1], NH * DH, dtype=torch.float32)
    _bwd_kernel[grid](dy, h, x_skip, z, weight, bias, skip, dh, dxs, dz, part, T, DH, NH * DH, eps, dy.stride(0),
                      dy.stride(1), h.stride(0), h.stride(1), *x_skip.stride(), z.stride(0), z.stride(1),
                      dz.stride(0), dz.stride(1), HAS_BIAS=bias is not None, **launch)
    return dh, dxs, column_sums(part)


@torch.library.custom_op("xlstm_kit::norm_skip_gate_bwd", mutates_args=())
def _backward(dy: torch.Tensor, h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
              bias: torch.Tensor | None, skip: torch.Tensor, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """dh (B, T, NH, DH), d x_skip and dz (B, T, NH * DH), and the fp32 parameter gradients stacked (3, NH * DH)
    in the order weight, skip, bias."""
    dz = z.new_empty(x_skip.shape)
    dh, dxs, dparams = backward_into(dy, h, x_skip, z, weight, bias, skip, eps, dz)
    return dh, dxs, dz, dparams


@_backward.register_fake
def _(dy, h, x_skip, z, weight, bias, skip, eps):
    B, T, NH, DH = h.shape
    return (torch.empty_like(h, memory_format=torch.contiguous_format), x_skip.new_empty(B, T, NH * DH),
            z.new_empty(B, T, NH * DH), h.new_empty(3, NH * DH, dtype=torch.float32))


def kernel_layouts(h: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h with each head's features dense and z with a unit feature stride, as the kernels address them."""
    h = h if h.stride(-1) == 1 and h.stride(-2) == h.shape[-1] else h.contiguous()
    return h, z if z.stride(-1) == 1 else z.contiguous()


def setup_context(ctx, inputs, output):
    """Keep what `fused_backward` reads: h, x_skip, z and the parameters (saved), eps (on ctx)."""
    h, x_skip, z, weight, bias, skip, eps = inputs
    ctx.eps = eps
    ctx.save_for_backward(h, x_skip, z, weight, bias, skip)


def fused_backward(ctx, dy):
    """Gradients of the chain from ctx (saved h, x_skip, z, weight, bias, skip; eps) and dy."""
    h, x_skip, z, weight, bias, skip = ctx.saved_tensors
    dh, dxs, dz, dparams = _backward(dy, h, x_skip, z, weight, bias, skip, ctx.eps)
    dw, dskip, dbias = dparams.unbind(0)
    dbias = None if bias is None else dbias.to(bias.dtype)
    return dh, dxs, dz, dw.to(weight.dtype), dbias, dskip.to(skip.dtype), None


_forward.register_autograd(fused_backward, setup_context=setup_context)


def norm_skip_gate_triton(h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None, skip: torch.Tensor, eps: float) -> torch.Tensor:
    """The fused chain on h (B, T, NH, DH) and x_skip, z (B, T, NH * DH); returns (B, T, NH * DH) in h's dtype.
    Shapes are checked by `xlstm_core.norm_gate.norm_skip_gate`; here only unit feature strides are ensured."""
    h, z = kernel_layouts(h, z)
    return _forward(h, x_skip, z, weight, bias, skip, float(eps))


__all__ = ["norm_skip_gate_triton"]
