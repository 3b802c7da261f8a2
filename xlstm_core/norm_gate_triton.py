"""Fused output chain of the pre-up mLSTM layer in Triton: per-head layer norm, learnable skip, SiLU output gate.

    y = (layernorm_per_head(h) * w [+ b] + skip * x_skip) * silu(z)

Forward and backward each read their inputs once and write their outputs once (bf16 in, fp32 statistics and
arithmetic, outputs in the inputs' dtypes); the PyTorch chain runs ~8 kernels forward and ~15 backward with fp32
intermediates. One program takes BM (backward: BWD_BM) tokens of one image and one head (DH features); the
backward recomputes the statistics from h instead of storing them, and writes per-program partial sums of the three
per-feature parameter gradients, which one torch sum reduces.

Every tensor is addressed through (batch, token, feature) strides, so the layer's views are read as they are: z, a
chunk of the up-projection (token stride 2 * inner), and x_skip, which the depthwise grid conv leaves channel-major.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# The forward's tokens per program (with 4 warps): 13 blocks cover ViL's 196 patches with 6% padding. (Compiled for
# sm_90 at 32 tokens the backward needed 255 registers and spilled; at 16 it takes 128.)
BM = 16
# The backward's tokens per program and warps, from an H100 sweep of twelve configs at ViL-T's shape (batch 256, 4
# heads of 96, bf16; benchmarks/norm_gate_tiles.py, GPU time from CUDA-graph replays): 0.204 ms against 0.250 at 16
# tokens / 4 warps and 0.201 at 4 tokens / 1 warp (within the run-to-run spread); its memory floor is ~0.09 ms.
# Re-swept in session 16 with z in the layer's layout (a slice of the 1,216-wide up-projection): 0.205 ms, against
# 0.2025 at 4 tokens / 1 warp.
BWD_BM, BWD_WARPS = 8, 2


@triton.jit
def _load(ptr, b, t, f, mask, s_b, s_t, s_f):
    return tl.load(ptr + b * s_b + t[:, None] * s_t + f[None, :] * s_f, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _normalise(h, mask, DH, eps):
    """(h - mean) / sqrt(var + eps) over each row's DH valid features (masked entries stay 0)."""
    mean = tl.sum(h, axis=1) / DH
    centred = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centred * centred, axis=1) / DH + eps)
    return centred * rstd[:, None], rstd


@triton.jit
def _tile_coords(T, DH, BD: tl.constexpr, BLOCK: tl.constexpr):
    """This program's batch row, token block, tokens t, features f of its head, and the masks."""
    b, tb, hd = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    t = tb * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, BD)
    mask_d = d < DH
    return b, tb, t, hd * DH + d, mask_d, (t < T)[:, None] & mask_d[None, :]


@triton.jit
def _pre_gate(H, XS, Z, W, BIAS, SKIP, b, t, f, mask_d, mask, DH, eps, sh_b, sh_t, sx_b, sx_t, sx_f, sz_b, sz_t,
              HAS_BIAS: tl.constexpr):
    """The tile's normalised h and its rstd, x_skip, z, w, skip and the pre-gate value xhat w (+ bias) + skip x_skip,
    in fp32: the forward's work, recomputed by the backward."""
    xhat, rstd = _normalise(_load(H, b, t, f, mask, sh_b, sh_t, 1), mask, DH, eps)
    xs = _load(XS, b, t, f, mask, sx_b, sx_t, sx_f)
    z = _load(Z, b, t, f, mask, sz_b, sz_t, 1)
    w = tl.load(W + f, mask=mask_d, other=0.0).to(tl.float32)
    skip = tl.load(SKIP + f, mask=mask_d, other=0.0).to(tl.float32)
    pre = xhat * w[None, :] + skip[None, :] * xs
    if HAS_BIAS:
        pre += tl.load(BIAS + f, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    return xhat, rstd, xs, z, w, skip, pre


@triton.jit
def _fwd_kernel(H, XS, Z, W, BIAS, SKIP, Y, T, DH, eps, sh_b, sh_t, sx_b, sx_t, sx_f, sz_b, sz_t, sy_b, sy_t,
                HAS_BIAS: tl.constexpr, BD: tl.constexpr, BLOCK: tl.constexpr):
    b, _, t, f, mask_d, mask = _tile_coords(T, DH, BD, BLOCK)
    _, _, _, z, _, _, pre = _pre_gate(H, XS, Z, W, BIAS, SKIP, b, t, f, mask_d, mask, DH, eps, sh_b, sh_t, sx_b, sx_t,
                                      sx_f, sz_b, sz_t, HAS_BIAS)
    y = pre * z * tl.sigmoid(z)
    tl.store(Y + b * sy_b + t[:, None] * sy_t + f[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(DY, H, XS, Z, W, BIAS, SKIP, DH_OUT, DXS, DZ, PART, T, DH, INNER, eps, sdy_b, sdy_t, sh_b, sh_t,
                sx_b, sx_t, sx_f, sz_b, sz_t, sdz_b, sdz_t, HAS_BIAS: tl.constexpr, BD: tl.constexpr,
                BLOCK: tl.constexpr):
    b, tb, t, f, mask_d, mask = _tile_coords(T, DH, BD, BLOCK)
    xhat, rstd, xs, z, w, skip, pre = _pre_gate(H, XS, Z, W, BIAS, SKIP, b, t, f, mask_d, mask, DH, eps, sh_b, sh_t,
                                                sx_b, sx_t, sx_f, sz_b, sz_t, HAS_BIAS)
    dy = _load(DY, b, t, f, mask, sdy_b, sdy_t, 1)
    sig = tl.sigmoid(z)
    dpre = dy * z * sig
    dz = dy * pre * sig * (1.0 + z * (1.0 - sig))
    dxhat = dpre * w[None, :]
    mean_dxhat = tl.sum(dxhat, axis=1) / DH
    mean_dxhat_xhat = tl.sum(dxhat * xhat, axis=1) / DH
    dh = rstd[:, None] * (dxhat - mean_dxhat[:, None] - xhat * mean_dxhat_xhat[:, None])
    out = b * T * INNER + t[:, None] * INNER + f[None, :]  # dh and d x_skip are stored (B, T, inner)
    tl.store(DH_OUT + out, dh.to(DH_OUT.dtype.element_ty), mask=mask)
    tl.store(DXS + out, (dpre * skip[None, :]).to(DXS.dtype.element_ty), mask=mask)
    tl.store(DZ + b * sdz_b + t[:, None] * sdz_t + f[None, :], dz.to(DZ.dtype.element_ty), mask=mask)
    part = PART + (b * tl.num_programs(1) + tb) * INNER + f  # (3, B * token blocks, inner): w, skip, bias
    rows = tl.num_programs(0) * tl.num_programs(1) * INNER
    tl.store(part, tl.sum(dpre * xhat, axis=0), mask=mask_d)
    tl.store(part + rows, tl.sum(dpre * xs, axis=0), mask=mask_d)
    tl.store(part + 2 * rows, tl.sum(dpre, axis=0), mask=mask_d)


def _grid(h: torch.Tensor, block: int) -> tuple[int, int, int]:
    B, T, NH, _ = h.shape
    return B, triton.cdiv(T, block), NH


def _bd(dh: int) -> int:
    return max(16, triton.next_power_of_2(dh))


@torch.library.custom_op("xlstm_kit::norm_skip_gate_fwd", mutates_args=())
def _forward(h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, skip: torch.Tensor, eps: float) -> torch.Tensor:
    """y (B, T, NH * DH) in h's dtype. Not exported: `norm_skip_gate_triton` is the entry point."""
    B, T, NH, DH = h.shape
    y = h.new_empty(B, T, NH * DH)
    _fwd_kernel[_grid(h, BM)](h, x_skip, z, weight, bias, skip, y, T, DH, eps, h.stride(0), h.stride(1),
                              *x_skip.stride(), z.stride(0), z.stride(1), y.stride(0), y.stride(1),
                              HAS_BIAS=bias is not None, BD=_bd(DH), BLOCK=BM, num_warps=4)
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
    grid = _grid(h, BWD_BM)
    dh = torch.empty_like(h, memory_format=torch.contiguous_format)
    dxs = x_skip.new_empty(B, T, NH * DH)
    part = h.new_empty(3, B * grid[1], NH * DH, dtype=torch.float32)
    _bwd_kernel[grid](dy, h, x_skip, z, weight, bias, skip, dh, dxs, dz, part, T, DH, NH * DH, eps, dy.stride(0),
                      dy.stride(1), h.stride(0), h.stride(1), *x_skip.stride(), z.stride(0), z.stride(1),
                      dz.stride(0), dz.stride(1), HAS_BIAS=bias is not None, BD=_bd(DH), BLOCK=BWD_BM,
                      num_warps=BWD_WARPS)
    return dh, dxs, part.sum(1)


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
