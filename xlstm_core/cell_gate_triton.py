"""The packed parallel mLSTM cell with the pre-up layer's output chain as its epilogue, in one Triton kernel:

    h = mLSTM(qk, v)                                                   (kernels/mlstm/parallel_triton.py)
    y = (layernorm_per_head(h) * w [+ b] + skip * x_skip) * silu(z)    (xlstm_core/norm_gate_triton.py)

A program of the cell's whole-head forward ends with all of a head's columns for its rows in registers, which is all
that the per-head layer norm reads, so the chain runs on that tile: h is neither written nor read back (two passes
of 38.5 MB per ViL-T block at batch 256), and one launch per block goes. h is rounded to its storage dtype before
the norm, as the separate ops see it.

For inference only (the pre-up layer without autograd), and for heads of at most MAX_HEAD features: ViL-T's
compiled inference went 23,316 / 23,361 -> 23,927 / 23,825 img/s (+2.3%, alternating arms in one call, H100), while
ViL-S's and ViL-B's wider heads ran slower fused (see MAX_REGISTERS). Training keeps the separate forwards (ViL's
mixer op, xlstm_core/mixer_triton.py): a variant that also wrote h and the cell's rows for the backward took 0.160
against 0.155 ms per op at ViL-T, and ViL-T's training lost 0.4%.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.mlstm.parallel_triton import MAX_LEN, _head_rows, packed_whole_head_forward, whole_head
from xlstm_core.norm_gate_triton import _gate_inputs, _normalise, _pre_gate


@triton.jit
def _gated_part(XS, Z, W, BIAS, SKIP, Y, b, t, f, mask_d, mask, xhat, sx_b, sx_t, sx_f, sz_b, sz_t, sy_b, sy_t,
                HAS_BIAS: tl.constexpr):
    """The chain on one column part of the tile, stored: y = (xhat w + bias + skip x_skip) silu(z)."""
    xs, z, w, skip, bias = _gate_inputs(XS, Z, W, BIAS, SKIP, b, t, f, mask_d, mask, sx_b, sx_t, sx_f, sz_b, sz_t,
                                        HAS_BIAS)
    y = _pre_gate(xhat, xs, w, skip, bias) * z * tl.sigmoid(z)
    tl.store(Y + b * sy_b + t[:, None] * sy_t + f[None, :], y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _cell_gate_kernel(Q, K, V, G, MX, M, H, ALPHA, GAMMA, S, NH, DK, DV,
                      sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sh_b, sh_h, sh_s, scale, eps,
                      XS, Z, W, BIAS, SKIP, Y, sx_b, sx_t, sx_f, sz_b, sz_t, sy_b, sy_t, norm_eps,
                      SIG: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, BR: tl.constexpr,
                      BJ: tl.constexpr, XA: tl.constexpr, XB: tl.constexpr, HAS_BIAS: tl.constexpr):
    """y for a tile of rows of one head (H, ALPHA and GAMMA are not written). The chain runs one column part at a
    time: each part's loads follow the previous part's store, which they may not pass, so only one part's x_skip
    and z are live at once."""
    h1, h2, b, hd, t, mask_t = _head_rows(Q, K, V, G, MX, M, ALPHA, GAMMA, S, NH, DK, DV, sq_b, sq_h, sq_s, sk_b,
                                          sk_h, sk_s, sv_b, sv_h, sv_s, scale, eps, False, SIG, NORMALIZE,
                                          PRECISION, BR, BJ, XA, XB)
    d1, d2 = tl.arange(0, XA), XA + tl.arange(0, XB)
    mask_d1, mask_d2 = d1 < DV, d2 < DV
    mask1, mask2 = mask_t[:, None] & mask_d1[None, :], mask_t[:, None] & mask_d2[None, :]
    h1 = h1.to(Y.dtype.element_ty).to(tl.float32)  # as the separate ops see h
    h2 = h2.to(Y.dtype.element_ty).to(tl.float32)
    xhat1, xhat2, _ = _normalise(h1, h2, mask1, mask2, DV, norm_eps)
    strides = (sx_b, sx_t, sx_f, sz_b, sz_t, sy_b, sy_t)
    _gated_part(XS, Z, W, BIAS, SKIP, Y, b, t, hd * DV + d1, mask_d1, mask1, xhat1, *strides, HAS_BIAS)
    _gated_part(XS, Z, W, BIAS, SKIP, Y, b, t, hd * DV + d2, mask_d2, mask2, xhat2, *strides, HAS_BIAS)


# The kernel is capped at MAX_REGISTERS per thread. The cell's own forward compiles to 116 at ViL-T's heads (96),
# so four programs of 4 warps share a multiprocessor; with the chain appended and no cap it took 255 and two, and
# the loop slowed with them: 0.207 ms per op against 0.154 for the separate cell and chain (H100, bf16, batch 256,
# ncu). Capped at 128 it takes 0.145 ms (benchmarks/cell_gate_ops.py; results/cell_gate_ops_s22.json). Wider heads
# do not gain (MAX_HEAD): at ViL-S's 192 the fused op took 0.301 ms uncapped and 0.409 capped at 168 against 0.278
# separate, at ViL-B's 384 at best 0.47 against 0.30 (a cap of 128 does not compile there).
MAX_REGISTERS = 128
MAX_HEAD = 128


def fuses(head_dim: int, length: int) -> bool:
    """Whether heads of `head_dim` features over `length` tokens run fused: at most MAX_HEAD features (under the
    interpreter, whose whole-head kernels stop at 64, at most that) and at most the parallel kernels' length."""
    return head_dim <= MAX_HEAD and whole_head(head_dim, head_dim) and length <= MAX_LEN


def _launch(qk, v, x_skip, z, weight, bias, skip, num_heads: int, sig: bool, eps: float) -> torch.Tensor:
    y = qk.new_empty(x_skip.shape)
    packed_whole_head_forward(
        _cell_gate_kernel, qk, v, y, num_heads, x_skip.shape[-1] // num_heads, sig, x_skip, z, weight, bias, skip, y,
        *x_skip.stride(), z.stride(0), z.stride(1), y.stride(0), y.stride(1), eps, HAS_BIAS=bias is not None,
        maxnreg=MAX_REGISTERS)
    return y


@torch.library.custom_op("xlstm_kit::mlstm_packed_norm_gate", mutates_args=())
def _forward(qk: torch.Tensor, v: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor | None, skip: torch.Tensor, num_heads: int, sig: bool, eps: float) -> torch.Tensor:
    return _launch(qk, v, x_skip, z, weight, bias, skip, num_heads, sig, eps)


@_forward.register_fake
def _(qk, v, x_skip, z, weight, bias, skip, num_heads, sig, eps):
    return qk.new_empty(x_skip.shape)


def mlstm_packed_norm_gate(qk: torch.Tensor, v: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor,
                           weight: torch.Tensor, bias: torch.Tensor | None, skip: torch.Tensor, *, num_heads: int,
                           variant: str = "exp", eps: float = 1e-6) -> torch.Tensor:
    """`norm_skip_gate(mlstm_packed(qk, v), x_skip, z, weight, bias, skip, eps=eps)` in one Triton kernel, for
    inference: the cell's eps is its default (1e-6), eps is the norm's. qk, v: the packed projections
    (`kernels.mlstm_packed`, head_dim_qk = head_dim_v = NH * DH / NH); x_skip, z (B, S, NH * DH) with any strides
    (x_skip channel-major, z a chunk of the up-projection); weight, bias, skip (NH * DH,). Returns y (B, S, NH * DH)
    in qk's dtype. Heads must satisfy `fuses`; no gradient flows (training takes xlstm_core/mixer_triton.py or the
    separate ops)."""
    B, S, inner = x_skip.shape
    if z.shape != x_skip.shape or qk.shape[:2] != (B, S) or v.shape[:2] != (B, S):
        raise ValueError(f"expected qk (B, S, W_qk), v (B, S, W_v) and x_skip, z (B, S, NH * DH) of one (B, S); got "
                         f"qk {tuple(qk.shape)}, v {tuple(v.shape)}, x_skip {tuple(x_skip.shape)}, z {tuple(z.shape)}")
    if inner % num_heads or not fuses(inner // num_heads, S):
        raise ValueError(f"the fused cell + norm-gate takes heads that `fuses` accepts (at most {MAX_HEAD} features, "
                         f"{MAX_LEN} tokens); got {num_heads} heads over {inner} features, {S} tokens")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                       for t in (qk, v, x_skip, z, weight, bias, skip)):
        raise RuntimeError("mlstm_packed_norm_gate computes no gradients: run it under torch.no_grad() or "
                           "torch.inference_mode(), or use mlstm_packed and norm_skip_gate")
    qk, v, z = (t if t.stride(-1) == 1 else t.contiguous() for t in (qk, v, z))
    return _forward(qk, v, x_skip, z, weight, bias, skip, num_heads, variant == "sig", float(eps))


__all__ = ["fuses", "mlstm_packed_norm_gate"]
