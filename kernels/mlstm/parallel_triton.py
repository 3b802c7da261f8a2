"""Fused parallel (quadratic) mLSTM in Triton for short sequences (ViL's 196 patches), forward and backward.

Per (batch * head, block of rows) one program holds everything on chip: the decay matrix, the scores and their
product with v are formed tile by tile along the sequence and never written to memory (the PyTorch parallel form
materialises (B * NH, S, S) fp32 maps). Every kernel reads q, k, v, h and the gradients through their strides, so
the (B, S, NH, D) layout of a layer's projections is used as it is, and h, dq, dk, dv are written in that layout.

Gates (one small kernel per sequence): log input gates li, F_t = sum_{r<=t} logsigmoid(f_r), g_s = li_s - F_s and
mx_t = max_{s<=t} g_s. Then log D(t, s) - m_t = g_s - mx_t <= 0 with the exp variant's stabiliser m_t = F_t + mx_t
(the maximum of reference.mlstm_parallel's log decay row); the sig variant has m = 0, i.e. mx_t = -F_t.
Forward: h_t = alpha_t * sum_{s<=t} (q_t . k_s / sqrt(DHQK)) D(t, s) v_s with alpha_t the inverse of the clipped
normaliser max(|n_t . q_t|, exp(-m_t)) + eps (for m < 0 in the overflow-safe form of the reference).
Backward (m held constant: its only effect on h is through eps): with dS_ts = alpha_t dh_t . v_s + delta_t and
delta_t = gamma_t (dh_t . h_t) the normaliser's share, dq_t = sum_s dS_ts D_ts k_s / sqrt(DHQK), dk_s and dv_s the
column sums, d li_s = k_s . dk_s and d F_t = q_t . dq_t - k_t . dk_t; the S x S tiles are recomputed, not stored.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpreter_enabled
from kernels.mlstm.chunk_states_triton import logsigmoid, max_combine, pow2_block

MAX_LEN = 256  # the longest sequence this kernel takes; longer ones belong to the chunkwise kernel

# (rows, columns, head-dim slice, output columns, warps, stages) per launch; the interpreter runs small head-dim tiles
# so that the CPU tests cover both paths (whole head dims held on chip, and head dims walked in slices) and the
# tiling of the sequence beyond 64 tokens. Heads of at most SMALL_HEAD features take the whole-head path: each
# program loads its own rows once instead of once per tile of the other side (its slice and output columns are the
# head dims rounded up to a power of two, whatever its tiles say).
# Sliced-path tiles from a sweep at ViL-T's shape (H100, bf16, B=256, NH=4, S=196, DH=96; forward 0.17 ms, forward +
# backward 1.06 ms); whole-head tiles from `python -m benchmarks.mlstm_parallel_tiles` at the same shape (30 configs
# per kernel; forward op 0.147 ms, backward op 0.446 -> 0.360 ms with the dq re-pin; results/mlstm_parallel_tiles.json).
TILES = {"fwd": (64, 64, 128, 128, 4, 1), "dq": (32, 64, 128, 128, 4, 1), "dkdv": (32, 64, 128, 128, 4, 1)}
WHOLE_HEAD_TILES = {"fwd": (64, 64, 128, 128, 4, 1), "dq": (64, 32, 128, 128, 4, 1), "dkdv": (32, 64, 128, 128, 4, 1)}
INTERPRETER_TILES = (64, 64, 32, 32, 1, 1)
SMALL_HEAD = 128


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs take 3xTF32 products: with plain tf32 the gradients, small differences of large terms (dS_ts =
    alpha_t dh_t . (v_s - sign(qn_t) h_t)), lost 4e-2 of their value at S = 77."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _tiles(case: str, dk: int, dv: int) -> tuple[int, int, int, int, int, int, bool]:
    """The case's tiles for these head dims, and whether the whole-head path runs (one slice covers both dims)."""
    width = pow2_block(max(dk, dv))
    if interpreter_enabled():
        br, bj, bd, bx, warps, stages = INTERPRETER_TILES
        small = width <= bd
    else:
        small = width <= SMALL_HEAD
        br, bj, bd, bx, warps, stages = (WHOLE_HEAD_TILES if small else TILES)[case]
    if small:
        bd = bx = width
    return br, bj, min(bd, width), min(bx, width), warps, stages, small


@triton.jit
def _gate_kernel(IG, FG, G, MX, M, S, NH, si_b, si_h, si_s, sf_b, sf_h, sf_s, SIG: tl.constexpr,
                 BS: tl.constexpr):
    bh = tl.program_id(0)
    b, hd = bh // NH, bh % NH
    offs = tl.arange(0, BS)
    mask = offs < S
    f = tl.load(FG + b * sf_b + hd * sf_h + offs * sf_s, mask=mask, other=0.0).to(tl.float32)
    li = tl.load(IG + b * si_b + hd * si_h + offs * si_s, mask=mask, other=0.0).to(tl.float32)
    if SIG:
        li = logsigmoid(li)
    f_cum = tl.cumsum(tl.where(mask, logsigmoid(f), 0.0), axis=0)
    g = li - f_cum
    if SIG:
        mx = -f_cum
        m = tl.zeros_like(f_cum)
    else:
        mx = tl.associative_scan(tl.where(mask, g, float("-inf")), 0, max_combine)
        m = f_cum + mx
    tl.store(G + bh * S + offs, g, mask=mask)
    tl.store(MX + bh * S + offs, mx, mask=mask)
    tl.store(M + bh * S + offs, m, mask=mask)


@triton.jit
def _tile(ptr, offs_r, mask_r, stride_r, offs_c, D):
    """Rows offs_r (stride stride_r) and columns offs_c (< D, unit stride) of a matrix at ptr; zeros outside."""
    return tl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :],
                   mask=mask_r[:, None] & (offs_c < D)[None, :], other=0.0)


@triton.jit
def _dot_rows(a_ptr, offs_a, mask_a, stride_a, b_ptr, offs_b, mask_b, stride_b, D, PRECISION: tl.constexpr,
              BD: tl.constexpr, BA: tl.constexpr, BB: tl.constexpr):
    """(BA, BB) fp32 products a_i . b_j of rows of two matrices with D columns, in slices of BD columns."""
    acc = tl.zeros((BA, BB), dtype=tl.float32)
    for d0 in range(0, D, BD):
        offs_d = d0 + tl.arange(0, BD)
        a = _tile(a_ptr, offs_a, mask_a, stride_a, offs_d, D)
        b = _tile(b_ptr, offs_b, mask_b, stride_b, offs_d, D)
        acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _decay(g_cols, mx_rows, offs_rows, offs_cols, mask_rows, mask_cols):
    """D(t, s) = exp(g_s - mx_t) for s <= t inside the sequence, else 0; rows t, columns s."""
    keep = (offs_cols[None, :] <= offs_rows[:, None]) & mask_rows[:, None] & mask_cols[None, :]
    return tl.where(keep, tl.exp(tl.minimum(g_cols[None, :] - mx_rows[:, None], 0.0)), 0.0)


@triton.jit
def _fwd_kernel(Q, K, V, G, MX, M, H, ALPHA, GAMMA, S, NH, DK, DV,
                sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sh_b, sh_h, sh_s, scale, eps,
                SIG: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, SMALL: tl.constexpr,
                BR: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, BX: tl.constexpr):
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    n_x = tl.cdiv(DV, BX)
    xb = pid % n_x
    r0 = (pid // n_x) * BR
    b, hd = (bh // NH).to(tl.int64), bh % NH
    q_ptr, k_ptr = Q + b * sq_b + hd * sq_h, K + b * sk_b + hd * sk_h
    v_ptr, h_ptr = V + b * sv_b + hd * sv_h, H + b * sh_b + hd * sh_h
    offs_r = r0 + tl.arange(0, BR)
    mask_r = offs_r < S
    offs_x = xb * BX + tl.arange(0, BX)
    mx_r = tl.load(MX + bh * S + offs_r, mask=mask_r, other=0.0)
    acc = tl.zeros((BR, BX), dtype=tl.float32)
    qn = tl.zeros((BR,), dtype=tl.float32)
    if SMALL:
        q_r = _tile(q_ptr, offs_r, mask_r, sq_s, offs_x, DK)
    for j0 in range(0, tl.minimum(r0 + BR, S), BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mask_j = offs_j < S
        g_j = tl.load(G + bh * S + offs_j, mask=mask_j, other=0.0)
        if SMALL:
            k_j = _tile(k_ptr, offs_j, mask_j, sk_s, offs_x, DK)
            scores = tl.dot(q_r, tl.trans(k_j), input_precision=PRECISION)
        else:
            scores = _dot_rows(q_ptr, offs_r, mask_r, sq_s, k_ptr, offs_j, mask_j, sk_s, DK, PRECISION, BD, BR, BJ)
        scores = scores * scale * _decay(g_j, mx_r, offs_r, offs_j, mask_r, mask_j)
        qn += tl.sum(scores, axis=1)
        v = _tile(v_ptr, offs_j, mask_j, sv_s, offs_x, DV)
        acc = tl.dot(scores.to(v.dtype), v, acc, input_precision=PRECISION)
    m_r = tl.load(M + bh * S + offs_r, mask=mask_r, other=0.0)
    if SIG:
        if NORMALIZE:
            alpha = 1.0 / (tl.maximum(tl.abs(qn), 1.0) + eps)
            active = tl.abs(qn) > 1.0
        else:
            alpha = tl.full((BR,), 1.0, tl.float32)
            active = tl.zeros((BR,), dtype=tl.int1)
    else:
        e = tl.exp(-tl.abs(m_r))  # exp(-m) for m >= 0, exp(m) for m < 0: never above 1
        alpha = tl.where(m_r < 0, e / (tl.maximum(tl.abs(qn) * e, 1.0) + eps * e),
                         1.0 / (tl.maximum(tl.abs(qn), e) + eps))
        active = tl.where(m_r < 0, tl.abs(qn) * e > 1.0, tl.abs(qn) > e)
    gamma = tl.where(active, tl.where(qn > 0, -alpha, alpha), 0.0)
    h = acc * alpha[:, None]
    tl.store(h_ptr + offs_r[:, None] * sh_s + offs_x[None, :], h.to(H.dtype.element_ty),
             mask=mask_r[:, None] & (offs_x < DV)[None, :])
    if xb == 0:
        tl.store(ALPHA + bh * S + offs_r, alpha, mask=mask_r)
        tl.store(GAMMA + bh * S + offs_r, gamma, mask=mask_r)


@triton.jit
def _dq_kernel(DH, H, K, V, DQ, Q, G, MX, ALPHA, GAMMA, DELTA, QDQ, S, NH, DK, DV,
               sdh_b, sdh_h, sdh_s, sh_b, sh_h, sh_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s,
               sdq_b, sdq_h, sdq_s, sq_b, sq_h, sq_s, scale, PRECISION: tl.constexpr, SMALL: tl.constexpr,
               BR: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, BX: tl.constexpr):
    """dq for a tile of rows and dq columns; also delta_t (the normaliser's share of dS) and the row-dot q . dq."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    n_x = tl.cdiv(DK, BX)
    xb = pid % n_x
    r0 = (pid // n_x) * BR
    b, hd = (bh // NH).to(tl.int64), bh % NH
    dh_ptr, h_ptr = DH + b * sdh_b + hd * sdh_h, H + b * sh_b + hd * sh_h
    k_ptr, v_ptr = K + b * sk_b + hd * sk_h, V + b * sv_b + hd * sv_h
    offs_r = r0 + tl.arange(0, BR)
    mask_r = offs_r < S
    offs_x = xb * BX + tl.arange(0, BX)
    mx_r = tl.load(MX + bh * S + offs_r, mask=mask_r, other=0.0)
    alpha = tl.load(ALPHA + bh * S + offs_r, mask=mask_r, other=0.0)
    dh_h = tl.zeros((BR,), dtype=tl.float32)
    if SMALL:
        dh_r = _tile(dh_ptr, offs_r, mask_r, sdh_s, offs_x, DV)
        dh_h = tl.sum(dh_r.to(tl.float32) * _tile(h_ptr, offs_r, mask_r, sh_s, offs_x, DV).to(tl.float32), axis=1)
    else:
        for d0 in range(0, DV, BD):
            offs_d = d0 + tl.arange(0, BD)
            dh = _tile(dh_ptr, offs_r, mask_r, sdh_s, offs_d, DV).to(tl.float32)
            dh_h += tl.sum(dh * _tile(h_ptr, offs_r, mask_r, sh_s, offs_d, DV).to(tl.float32), axis=1)
    delta = tl.load(GAMMA + bh * S + offs_r, mask=mask_r, other=0.0) * dh_h
    acc = tl.zeros((BR, BX), dtype=tl.float32)
    for j0 in range(0, tl.minimum(r0 + BR, S), BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mask_j = offs_j < S
        g_j = tl.load(G + bh * S + offs_j, mask=mask_j, other=0.0)
        if SMALL:
            ds = tl.dot(dh_r, tl.trans(_tile(v_ptr, offs_j, mask_j, sv_s, offs_x, DV)), input_precision=PRECISION)
        else:
            ds = _dot_rows(dh_ptr, offs_r, mask_r, sdh_s, v_ptr, offs_j, mask_j, sv_s, DV, PRECISION, BD, BR, BJ)
        ds = (ds * alpha[:, None] + delta[:, None]) * _decay(g_j, mx_r, offs_r, offs_j, mask_r, mask_j)
        k = _tile(k_ptr, offs_j, mask_j, sk_s, offs_x, DK)
        acc = tl.dot(ds.to(k.dtype), k, acc, input_precision=PRECISION)
    dq = acc * scale
    mask_rx = mask_r[:, None] & (offs_x < DK)[None, :]
    tl.store(DQ + b * sdq_b + hd * sdq_h + offs_r[:, None] * sdq_s + offs_x[None, :], dq.to(DQ.dtype.element_ty),
             mask=mask_rx)
    q = _tile(Q + b * sq_b + hd * sq_h, offs_r, mask_r, sq_s, offs_x, DK).to(tl.float32)
    tl.store(QDQ + (xb * tl.num_programs(1) + bh) * S + offs_r, tl.sum(q * dq, axis=1), mask=mask_r)
    if xb == 0:
        tl.store(DELTA + bh * S + offs_r, delta, mask=mask_r)


@triton.jit
def _dkdv_kernel(Q, K, V, DH, DK_OUT, DV_OUT, G, MX, ALPHA, DELTA, KDK, S, NH, DK, DV,
                 sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sdh_b, sdh_h, sdh_s,
                 sdk_b, sdk_h, sdk_s, sdv_b, sdv_h, sdv_s, scale, PRECISION: tl.constexpr, SMALL: tl.constexpr,
                 BR: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, BX: tl.constexpr):
    """dk and dv for a tile of columns s (BJ of them) and output columns xb: sums over the rows t >= s."""
    pid = tl.program_id(0)
    bh = tl.program_id(1)
    n_x = tl.cdiv(tl.maximum(DK, DV), BX)
    xb = pid % n_x
    c0 = (pid // n_x) * BJ
    b, hd = (bh // NH).to(tl.int64), bh % NH
    q_ptr, k_ptr = Q + b * sq_b + hd * sq_h, K + b * sk_b + hd * sk_h
    v_ptr, dh_ptr = V + b * sv_b + hd * sv_h, DH + b * sdh_b + hd * sdh_h
    offs_c = c0 + tl.arange(0, BJ)
    mask_c = offs_c < S
    offs_x = xb * BX + tl.arange(0, BX)
    g_c = tl.load(G + bh * S + offs_c, mask=mask_c, other=0.0)
    acc_k = tl.zeros((BJ, BX), dtype=tl.float32)
    acc_v = tl.zeros((BJ, BX), dtype=tl.float32)
    if SMALL:
        k_c = _tile(k_ptr, offs_c, mask_c, sk_s, offs_x, DK)
        v_c = _tile(v_ptr, offs_c, mask_c, sv_s, offs_x, DV)
    for t0 in range(c0 - c0 % BR, S, BR):
        offs_t = t0 + tl.arange(0, BR)
        mask_t = offs_t < S
        mx_t = tl.load(MX + bh * S + offs_t, mask=mask_t, other=0.0)
        alpha = tl.load(ALPHA + bh * S + offs_t, mask=mask_t, other=0.0)
        delta = tl.load(DELTA + bh * S + offs_t, mask=mask_t, other=0.0)
        decay = tl.trans(_decay(g_c, mx_t, offs_t, offs_c, mask_t, mask_c))  # (columns s, rows t)
        dh = _tile(dh_ptr, offs_t, mask_t, sdh_s, offs_x, DV)
        q = _tile(q_ptr, offs_t, mask_t, sq_s, offs_x, DK)
        if SMALL:
            scores = tl.dot(k_c, tl.trans(q), input_precision=PRECISION) * scale
            ds = tl.dot(v_c, tl.trans(dh), input_precision=PRECISION)
        else:
            scores = _dot_rows(k_ptr, offs_c, mask_c, sk_s, q_ptr, offs_t, mask_t, sq_s, DK, PRECISION, BD, BJ,
                               BR) * scale
            ds = _dot_rows(v_ptr, offs_c, mask_c, sv_s, dh_ptr, offs_t, mask_t, sdh_s, DV, PRECISION, BD, BJ, BR)
        ds = (ds * alpha[None, :] + delta[None, :]) * decay
        acc_v = tl.dot((scores * decay * alpha[None, :]).to(dh.dtype), dh, acc_v, input_precision=PRECISION)
        acc_k = tl.dot(ds.to(q.dtype), q, acc_k, input_precision=PRECISION)
    dk = acc_k * scale
    tl.store(DK_OUT + b * sdk_b + hd * sdk_h + offs_c[:, None] * sdk_s + offs_x[None, :],
             dk.to(DK_OUT.dtype.element_ty), mask=mask_c[:, None] & (offs_x < DK)[None, :])
    tl.store(DV_OUT + b * sdv_b + hd * sdv_h + offs_c[:, None] * sdv_s + offs_x[None, :],
             acc_v.to(DV_OUT.dtype.element_ty), mask=mask_c[:, None] & (offs_x < DV)[None, :])
    if SMALL:
        k = k_c.to(tl.float32)
    else:
        k = _tile(k_ptr, offs_c, mask_c, sk_s, offs_x, DK).to(tl.float32)
    tl.store(KDK + (xb * tl.num_programs(1) + bh) * S + offs_c, tl.sum(k * dk, axis=1), mask=mask_c)


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, sequence) strides of a (B, NH, S, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _bsnd(like: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty (B, NH, S, d) tensor stored as (B, S, NH, d), the layout of a layer's projections."""
    B, NH, S, _ = like.shape
    return torch.empty(B, S, NH, d, device=like.device, dtype=dtype).transpose(1, 2)


@torch.library.custom_op("xlstm_kit::mlstm_parallel_fwd", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, fgate: torch.Tensor, sig: bool,
             normalize: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """h (B, NH, S, DHV) and the per-row fp32 values the backward needs: g, mx, alpha, gamma, each (B, NH, S).
    Not exported: `mlstm_parallel_triton` is the entry point."""
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    g, mx, m, alpha, gamma = (q.new_empty(B, NH, S, dtype=torch.float32) for _ in range(5))
    _gate_kernel[(B * NH,)](igate, fgate, g, mx, m, S, NH, *igate.stride(), *fgate.stride(), SIG=sig,
                            BS=pow2_block(S))
    h = _bsnd(q, DV, q.dtype)
    br, bj, bd, bx, warps, stages, small = _tiles("fwd", DK, DV)
    grid = (triton.cdiv(S, br) * triton.cdiv(DV, bx), B * NH)
    _fwd_kernel[grid](q, k, v, g, mx, m, h, alpha, gamma, S, NH, DK, DV, *_strides(q), *_strides(k), *_strides(v),
                      *_strides(h), DK**-0.5, eps, SIG=sig, NORMALIZE=normalize, PRECISION=_precision(q.dtype),
                      SMALL=small, BR=br, BJ=bj, BD=bd, BX=bx, num_warps=warps, num_stages=stages)
    return h, g, mx, alpha, gamma


@_forward.register_fake
def _(q, k, v, igate, fgate, sig, normalize, eps):
    B, NH, S, _ = q.shape
    row = lambda: q.new_empty(B, NH, S, dtype=torch.float32)
    return _bsnd(q, v.shape[-1], q.dtype), row(), row(), row(), row()


@torch.library.custom_op("xlstm_kit::mlstm_parallel_bwd", mutates_args=())
def _backward(dh: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, g: torch.Tensor,
              mx: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """dq, dk, dv and the fp32 row-dots q . dq, k . dk (B, NH, S) from which the gate gradients follow."""
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    if dh.stride(-1) != 1:
        dh = dh.contiguous()
    dq, dk, dv = _bsnd(q, DK, q.dtype), _bsnd(k, DK, k.dtype), _bsnd(v, DV, v.dtype)
    delta = torch.empty(B, NH, S, device=q.device, dtype=torch.float32)
    br, bj, bd, bx, warps, stages, small = _tiles("dq", DK, DV)
    n_xq = triton.cdiv(DK, bx)
    qdq = torch.empty(n_xq, B, NH, S, device=q.device, dtype=torch.float32)
    _dq_kernel[(triton.cdiv(S, br) * n_xq, B * NH)](
        dh, h, k, v, dq, q, g, mx, alpha, gamma, delta, qdq, S, NH, DK, DV, *_strides(dh), *_strides(h),
        *_strides(k), *_strides(v), *_strides(dq), *_strides(q), DK**-0.5, PRECISION=_precision(q.dtype),
        SMALL=small, BR=br, BJ=bj, BD=bd, BX=bx, num_warps=warps, num_stages=stages)
    br, bj, bd, bx, warps, stages, small = _tiles("dkdv", DK, DV)
    n_x = triton.cdiv(max(DK, DV), bx)
    kdk = torch.empty(n_x, B, NH, S, device=q.device, dtype=torch.float32)
    _dkdv_kernel[(triton.cdiv(S, bj) * n_x, B * NH)](
        q, k, v, dh, dk, dv, g, mx, alpha, delta, kdk, S, NH, DK, DV, *_strides(q), *_strides(k), *_strides(v),
        *_strides(dh), *_strides(dk), *_strides(dv), DK**-0.5, PRECISION=_precision(q.dtype), SMALL=small, BR=br,
        BJ=bj, BD=bd, BX=bx, num_warps=warps, num_stages=stages)
    return dq, dk, dv, qdq.sum(0), kdk.sum(0)


@_backward.register_fake
def _(dh, q, k, v, h, g, mx, alpha, gamma):
    B, NH, S, DK = q.shape
    row = lambda: q.new_empty(B, NH, S, dtype=torch.float32)
    return _bsnd(q, DK, q.dtype), _bsnd(k, DK, k.dtype), _bsnd(v, v.shape[-1], v.dtype), row(), row()


def _setup_context(ctx, inputs, output):
    q, k, v, igate, fgate, sig, _, _ = inputs
    h, g, mx, alpha, gamma = output
    ctx.sig = sig
    ctx.save_for_backward(q, k, v, igate, fgate, h, g, mx, alpha, gamma)


def _autograd_backward(ctx, dh, *_):
    q, k, v, igate, fgate, h, g, mx, alpha, gamma = ctx.saved_tensors
    dq, dk, dv, qdq, kdk = _backward(dh, q, k, v, h, g, mx, alpha, gamma)
    # d log i_s = k_s . dk_s; d F_t = q_t . dq_t - k_t . dk_t, and log f_r enters every F_t with t >= r
    d_lf = torch.flip(torch.cumsum(torch.flip(qdq - kdk, [-1]), -1), [-1])
    di = kdk * torch.sigmoid(-igate.float()) if ctx.sig else kdk
    df = d_lf * torch.sigmoid(-fgate.float())
    return dq, dk, dv, di.to(igate.dtype), df.to(fgate.dtype), None, None, None


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def _vector_aligned(x: torch.Tensor) -> torch.Tensor:
    """x, or a copy in (B, S, NH, D) storage when that lets Triton vectorise its loads and x does not. Triton proves
    a stride divisible by 16 elements or loads 16-bit scalars: on an H100 at ViL-T's shape, views with token stride
    776 cost ~0.22 ms more per forward + backward, a copy ~0.08 ms. Base-pointer alignment is not checked (dynamo
    cannot trace storage_offset()); Triton sees it at launch and only loses vector width, not correctness."""
    aligned = x.stride(-1) == 1 and all(st % 16 == 0 for st in x.stride()[:-1])
    if aligned or (x.shape[-1] % 16 and x.stride(-1) == 1):
        return x
    return _bsnd(x, x.shape[-1], x.dtype).copy_(x)


def mlstm_parallel_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor,
                          fgate: torch.Tensor, *, variant: str = "exp", normalize: bool = True,
                          eps: float = 1e-6) -> torch.Tensor:
    """Parallel-form mLSTM of `reference.mlstm_parallel` (no initial or last state) for S <= MAX_LEN.

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); gates (B, NH, S); fp16/bf16/fp32. Views are read as they are when
    their strides are multiples of 16 elements (or the head dim is not), else copied (`_vector_aligned`). Returns h
    (B, NH, S, DHV) in q's dtype, stored as (B, S, NH, DHV). Differentiable w.r.t. q, k, v and both gates; runs as
    one opaque op inside torch.compile graphs.
    """
    S = q.shape[2]
    if S > MAX_LEN:
        raise ValueError(f"the fused parallel mLSTM takes sequences of at most {MAX_LEN} tokens, got S={S}; "
                         "use form='chunkwise'")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton mLSTM kernels take fp16/bf16/fp32 inputs, got {q.dtype}")
    q, k, v = (_vector_aligned(x) for x in (q, k, v))
    return _forward(q, k, v, igate, fgate, variant == "sig", normalize, float(eps))[0]


__all__ = ["MAX_LEN", "mlstm_parallel_triton"]
