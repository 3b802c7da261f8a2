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
from kernels.mlstm.packed_layout import unpack

MAX_LEN = 256  # the longest sequence this kernel takes; longer ones belong to the chunkwise kernel

# Heads of at most SMALL_HEAD features (INTERPRETER_SMALL_HEAD under the interpreter) take the whole-head kernels:
# each program loads its own rows once and keeps them on chip, and a head is held as two power-of-two column parts
# (`head_parts`: 96 = 64 + 32, 192 = 128 + 64), so no product runs over padding columns. Their row tiles are aligned
# to the sequence's end, so that a partial tile (196 = 3 * 64 + 4) is the first one, whose causal loop is shortest.
# Wider heads take the sliced kernels, which walk the head dims in slices and output columns in blocks.
# WHOLE_HEAD_TILES: (rows, columns, warps, stages) per launch, by head width (the first bound at or above it), from
# `python -m benchmarks.mlstm_parallel_tiles` (H100, bf16, NH=4, S=196, GPU time per op from CUDA-graph replays):
# - up to 128 at ViL-T's heads (B=256, DH=96; results/mlstm_parallel_tiles.json): the forward's 3 pipeline stages
#   take 0.092 against 0.111 ms for 2; re-swept in session 16 on the packed ops with the layer's GEMM-output
#   strides, every pin within 1% of the fastest of 36 configs;
# - up to 192 and 384 at ViL-S's and ViL-B's (B=256, DH=192: 48 configs; B=128, DH=384: 64 configs; session 21,
#   results/mlstm_parallel_tiles_s21.json). Forward / backward per op: 0.172 / 0.625 ms at 192 and 0.195 / 0.705 at
#   384, against 0.371 / 1.252 and 0.331 / 1.207 for the sliced kernels, which these heads took before.
# Widths between take the next row, whose parts are at least as wide (256 = 128 + 128 takes 384's tiles), so no
# program holds more than a swept one. Offline sm_90 compiles (ptxas -v, Triton 3.6) specialised as the launches are
# (unit strides constant, strides divisible by 16 marked; they read 116 registers for ViL-T's forward, as ncu does):
# at ViL-S's and ViL-B's heads 224-255 registers, spills of at most 112 B (ViL-B's dk/dv). Unspecialised compiles
# (session 21) read 255 registers and 0.2-0.9 KB everywhere, and 1.4-1.7 KB in the dk/dv kernel at 136-160 (parts
# 128 + 16 or 32; under Triton 3.8 32 registers and ~10 KB). Timed in session 22 (B=256, forward / backward per op)
# those widths still beat the sliced kernels: 136: 0.298 / 1.690 against 6.10 / 17.8 ms, 160: 0.161 / 0.759 against
# 0.374 / 1.242, 256: 0.251 / 0.924 against 0.378 / 1.309.
# TILES: (rows, columns, head-dim slice, output columns, warps, stages) of the sliced kernels, from the same sweep at
# ViL-S's and ViL-B's heads (DH=192 and 384; results/mlstm_parallel_tiles_sliced.json): pipeline stages took the
# forward op from 0.42 to 0.36 ms and the backward op (dq's tiles) from 1.53 to 1.31 ms at DH=192.
# The interpreter runs small tiles, so that the CPU tests cover several row tiles, both kernel families and the
# tiling of the head dims.
WHOLE_HEAD_TILES = ((128, {"fwd": (64, 16, 4, 3), "dq": (64, 16, 4, 4), "dkdv": (32, 64, 4, 1)}),
                    (192, {"fwd": (64, 32, 4, 3), "dq": (64, 32, 4, 3), "dkdv": (32, 32, 4, 2)}),
                    (384, {"fwd": (64, 16, 4, 2), "dq": (32, 32, 4, 2), "dkdv": (32, 16, 4, 2)}))
TILES = {"fwd": (64, 64, 128, 128, 4, 3), "dq": (64, 64, 128, 128, 4, 3), "dkdv": (32, 64, 128, 128, 4, 2)}
INTERPRETER_WHOLE_HEAD_TILES = (32, 16, 1, 1)
INTERPRETER_TILES = (32, 16, 32, 32, 1, 1)
SMALL_HEAD = WHOLE_HEAD_TILES[-1][0]
INTERPRETER_SMALL_HEAD = 64
# Tokens per program of the packed gate-gradient kernel (`_packed_gate_grad_kernel`). One program per sequence took
# 23 us per ViL-T block (256 programs, each a chain of dependent loads, a scan and scattered stores); a program per
# 32 tokens gives the GPU seven times as many, each adding the sum over the tokens after its own. Padding zeros are
# stored as (BT, padding) tiles: one (BS, padding) tile took 256 registers per thread at ViL's 64 columns and spilled
# ~8 KB (127 us per block, session 22).
GATE_GRAD_TOKENS, INTERPRETER_GATE_GRAD_TOKENS = 32, 8


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs take 3xTF32 products: with plain tf32 the gradients, small differences of large terms (dS_ts =
    alpha_t dh_t . (v_s - sign(qn_t) h_t)), lost 4e-2 of their value at S = 77."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def whole_head(dk: int, dv: int) -> bool:
    """Whether heads of these dims take the whole-head kernels."""
    limit = INTERPRETER_SMALL_HEAD if interpreter_enabled() else SMALL_HEAD
    return max(dk, dv) <= limit


def head_parts(dk: int, dv: int) -> tuple[int, int]:
    """Widths (a, b) of the two column parts [0, a) and [a, a + b) that hold a whole head: 96 -> (64, 32),
    128 -> (64, 64); each at least 16, the least tl.dot takes."""
    width = max(dk, dv)
    a = max(16, pow2_block(width) // 2)
    return a, pow2_block(width - a) if width > a else 16


def whole_head_row(width: int) -> dict[str, tuple[int, int, int, int]]:
    """The WHOLE_HEAD_TILES row (tiles per launch case) of heads `width` features wide."""
    return next(tiles for bound, tiles in WHOLE_HEAD_TILES if width <= bound)


def _whole_head_tiles(case: str, dk: int, dv: int) -> tuple[int, int, int, int]:
    return INTERPRETER_WHOLE_HEAD_TILES if interpreter_enabled() else whole_head_row(max(dk, dv))[case]


def _sliced_tiles(case: str, dk: int, dv: int) -> tuple[int, int, int, int, int, int]:
    br, bj, bd, bx, warps, stages = INTERPRETER_TILES if interpreter_enabled() else TILES[case]
    width = pow2_block(max(dk, dv))
    return br, bj, min(bd, width), min(bx, width), warps, stages


@triton.jit
def _gate_share(ptr, b, hd, offs, mask, s_b, s_h, s_s):
    return tl.load(ptr + b * s_b + hd * s_h + offs * s_s, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _gate_kernel(IG, FG, IG2, FG2, G, MX, M, S, NH, si_b, si_h, si_s, sf_b, sf_h, sf_s, si2_b, si2_h, si2_s,
                 sf2_b, sf2_h, sf2_s, SIG: tl.constexpr, TWO_SHARES: tl.constexpr, BS: tl.constexpr):
    """g, mx and m per sequence; the gate pre-activations are IG / FG, plus IG2 / FG2 with TWO_SHARES."""
    bh = tl.program_id(0)
    b, hd = bh // NH, bh % NH
    offs = tl.arange(0, BS)
    mask = offs < S
    f = _gate_share(FG, b, hd, offs, mask, sf_b, sf_h, sf_s)
    li = _gate_share(IG, b, hd, offs, mask, si_b, si_h, si_s)
    if TWO_SHARES:
        f += _gate_share(FG2, b, hd, offs, mask, sf2_b, sf2_h, sf2_s)
        li += _gate_share(IG2, b, hd, offs, mask, si2_b, si2_h, si2_s)
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
def _column_step(G, bh, S, j0, mx_r, offs_r, mask_r, BJ: tl.constexpr):
    """Columns j0 .. j0 + BJ of a row tile's causal loop: their offsets and mask, and the decay (rows, columns)."""
    offs_j = j0 + tl.arange(0, BJ)
    mask_j = offs_j < S
    g_j = tl.load(G + bh * S + offs_j, mask=mask_j, other=0.0)
    return offs_j, mask_j, _decay(g_j, mx_r, offs_r, offs_j, mask_r, mask_j)


@triton.jit
def _normalise_rows(qn, M, ALPHA, GAMMA, bh, S, offs_r, mask_r, store, eps, SIG: tl.constexpr,
                    NORMALIZE: tl.constexpr, BR: tl.constexpr):
    """alpha (the inverse of the clipped normaliser) per row; where `store`, alpha and gamma (its derivative's share
    of dS) are written for the backward."""
    if SIG:
        if NORMALIZE:
            alpha = 1.0 / (tl.maximum(tl.abs(qn), 1.0) + eps)
            active = tl.abs(qn) > 1.0
        else:
            alpha = tl.full((BR,), 1.0, tl.float32)
            active = tl.zeros((BR,), dtype=tl.int1)
    else:
        m_r = tl.load(M + bh * S + offs_r, mask=mask_r, other=0.0)
        e = tl.exp(-tl.abs(m_r))  # exp(-m) for m >= 0, exp(m) for m < 0: never above 1
        alpha = tl.where(m_r < 0, e / (tl.maximum(tl.abs(qn) * e, 1.0) + eps * e),
                         1.0 / (tl.maximum(tl.abs(qn), e) + eps))
        active = tl.where(m_r < 0, tl.abs(qn) * e > 1.0, tl.abs(qn) > e)
    if store:
        tl.store(ALPHA + bh * S + offs_r, alpha, mask=mask_r)
        tl.store(GAMMA + bh * S + offs_r, tl.where(active, tl.where(qn > 0, -alpha, alpha), 0.0), mask=mask_r)
    return alpha


@triton.jit
def _fwd_kernel(Q, K, V, G, MX, M, H, ALPHA, GAMMA, S, NH, DK, DV,
                sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sh_b, sh_h, sh_s, scale, eps,
                SIG: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
                BR: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, BX: tl.constexpr):
    """Sliced forward: h for a tile of rows and a block of output columns, head dims walked in slices of BD."""
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
    for j0 in range(0, tl.minimum(r0 + BR, S), BJ):
        offs_j, mask_j, decay = _column_step(G, bh, S, j0, mx_r, offs_r, mask_r, BJ)
        scores = _dot_rows(q_ptr, offs_r, mask_r, sq_s, k_ptr, offs_j, mask_j, sk_s, DK, PRECISION, BD, BR, BJ)
        scores = scores * scale * decay
        qn += tl.sum(scores, axis=1)
        v = _tile(v_ptr, offs_j, mask_j, sv_s, offs_x, DV)
        acc = tl.dot(scores.to(v.dtype), v, acc, input_precision=PRECISION)
    alpha = _normalise_rows(qn, M, ALPHA, GAMMA, bh, S, offs_r, mask_r, xb == 0, eps, SIG, NORMALIZE, BR)
    tl.store(h_ptr + offs_r[:, None] * sh_s + offs_x[None, :], (acc * alpha[:, None]).to(H.dtype.element_ty),
             mask=mask_r[:, None] & (offs_x < DV)[None, :])


@triton.jit
def _dq_kernel(DH, H, K, V, DQ, Q, G, MX, ALPHA, GAMMA, DELTA, QDQ, S, NH, DK, DV,
               sdh_b, sdh_h, sdh_s, sh_b, sh_h, sh_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s,
               sdq_b, sdq_h, sdq_s, sq_b, sq_h, sq_s, scale, PRECISION: tl.constexpr,
               BR: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, BX: tl.constexpr):
    """Sliced dq for a tile of rows and dq columns; also delta_t (the normaliser's share of dS) and the row-dot
    q . dq."""
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
    for d0 in range(0, DV, BD):
        offs_d = d0 + tl.arange(0, BD)
        dh = _tile(dh_ptr, offs_r, mask_r, sdh_s, offs_d, DV).to(tl.float32)
        dh_h += tl.sum(dh * _tile(h_ptr, offs_r, mask_r, sh_s, offs_d, DV).to(tl.float32), axis=1)
    delta = tl.load(GAMMA + bh * S + offs_r, mask=mask_r, other=0.0) * dh_h
    acc = tl.zeros((BR, BX), dtype=tl.float32)
    for j0 in range(0, tl.minimum(r0 + BR, S), BJ):
        offs_j, mask_j, decay = _column_step(G, bh, S, j0, mx_r, offs_r, mask_r, BJ)
        ds = _dot_rows(dh_ptr, offs_r, mask_r, sdh_s, v_ptr, offs_j, mask_j, sv_s, DV, PRECISION, BD, BR, BJ)
        ds = (ds * alpha[:, None] + delta[:, None]) * decay
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
def _dkdv_rows(MX, ALPHA, DELTA, bh, S, t0, g_c, offs_c, mask_c, BR: tl.constexpr):
    """Rows t0 .. t0 + BR of a dk / dv loop: their offsets and mask, alpha and delta, and the decay (columns s of the
    program's tile, rows t)."""
    offs_t = t0 + tl.arange(0, BR)
    mask_t = offs_t < S
    mx_t = tl.load(MX + bh * S + offs_t, mask=mask_t, other=0.0)
    alpha = tl.load(ALPHA + bh * S + offs_t, mask=mask_t, other=0.0)
    delta = tl.load(DELTA + bh * S + offs_t, mask=mask_t, other=0.0)
    return offs_t, mask_t, alpha, delta, tl.trans(_decay(g_c, mx_t, offs_t, offs_c, mask_t, mask_c))


@triton.jit
def _dkdv_kernel(Q, K, V, DH, DK_OUT, DV_OUT, G, MX, ALPHA, DELTA, KDK, S, NH, DK, DV,
                 sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sdh_b, sdh_h, sdh_s,
                 sdk_b, sdk_h, sdk_s, sdv_b, sdv_h, sdv_s, scale, PRECISION: tl.constexpr,
                 BR: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, BX: tl.constexpr):
    """Sliced dk and dv for a tile of columns s (BJ of them) and output columns xb: sums over the rows t >= s."""
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
    for t0 in range(c0 - c0 % BR, S, BR):
        offs_t, mask_t, alpha, delta, decay = _dkdv_rows(MX, ALPHA, DELTA, bh, S, t0, g_c, offs_c, mask_c, BR)
        dh = _tile(dh_ptr, offs_t, mask_t, sdh_s, offs_x, DV)
        q = _tile(q_ptr, offs_t, mask_t, sq_s, offs_x, DK)
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
    k = _tile(k_ptr, offs_c, mask_c, sk_s, offs_x, DK).to(tl.float32)
    tl.store(KDK + (xb * tl.num_programs(1) + bh) * S + offs_c, tl.sum(k * dk, axis=1), mask=mask_c)


@triton.jit
def _parts(ptr, offs_r, mask_r, stride_r, D, XA: tl.constexpr, XB: tl.constexpr):
    """Rows offs_r of a head (D columns) as its two column parts [0, XA) and [XA, XA + XB); zeros outside."""
    return (_tile(ptr, offs_r, mask_r, stride_r, tl.arange(0, XA), D),
            _tile(ptr, offs_r, mask_r, stride_r, XA + tl.arange(0, XB), D))


@triton.jit
def _store_parts(ptr, offs_r, mask_r, stride_r, D, a, b, XA: tl.constexpr, XB: tl.constexpr):
    offs_a, offs_b = tl.arange(0, XA), XA + tl.arange(0, XB)
    tl.store(ptr + offs_r[:, None] * stride_r + offs_a[None, :], a.to(ptr.dtype.element_ty),
             mask=mask_r[:, None] & (offs_a < D)[None, :])
    tl.store(ptr + offs_r[:, None] * stride_r + offs_b[None, :], b.to(ptr.dtype.element_ty),
             mask=mask_r[:, None] & (offs_b < D)[None, :])


@triton.jit
def _dot_parts(a1, a2, b1, b2, PRECISION: tl.constexpr):
    """sum over both column parts of a_i . b_j: (rows of a, rows of b) in fp32."""
    return tl.dot(a2, tl.trans(b2), tl.dot(a1, tl.trans(b1), input_precision=PRECISION), input_precision=PRECISION)


@triton.jit
def _end_aligned_rows(pid, S, BR: tl.constexpr):
    """Rows of row tile `pid` when the tiles end at the sequence's end (the first may start before 0), their mask,
    and the tile's end (the causal loop's bound)."""
    r_end = (pid + 1) * BR - (tl.cdiv(S, BR) * BR - S)
    offs_r = r_end - BR + tl.arange(0, BR)
    return offs_r, (offs_r >= 0) & (offs_r < S), r_end


@triton.jit
def _head_rows(Q, K, V, G, MX, M, ALPHA, GAMMA, S, NH, DK, DV, sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s,
               scale, eps, store_rows, SIG: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
               BR: tl.constexpr, BJ: tl.constexpr, XA: tl.constexpr, XB: tl.constexpr):
    """The whole-head forward of this program's row tile (alpha and gamma stored where `store_rows`): h as its two
    fp32 column parts, the batch row and head, and the rows with their mask. Its own kernel stores h;
    xlstm_core/cell_gate_triton.py runs the layer's output chain on it first."""
    bh = tl.program_id(1)
    b, hd = (bh // NH).to(tl.int64), bh % NH
    q_ptr, k_ptr, v_ptr = Q + b * sq_b + hd * sq_h, K + b * sk_b + hd * sk_h, V + b * sv_b + hd * sv_h
    offs_r, mask_r, r_end = _end_aligned_rows(tl.program_id(0), S, BR)
    mx_r = tl.load(MX + bh * S + offs_r, mask=mask_r, other=0.0)
    q1, q2 = _parts(q_ptr, offs_r, mask_r, sq_s, DK, XA, XB)
    acc1 = tl.zeros((BR, XA), dtype=tl.float32)
    acc2 = tl.zeros((BR, XB), dtype=tl.float32)
    qn = tl.zeros((BR,), dtype=tl.float32)
    for j0 in range(0, r_end, BJ):
        offs_j, mask_j, decay = _column_step(G, bh, S, j0, mx_r, offs_r, mask_r, BJ)
        k1, k2 = _parts(k_ptr, offs_j, mask_j, sk_s, DK, XA, XB)
        scores = _dot_parts(q1, q2, k1, k2, PRECISION) * scale * decay
        qn += tl.sum(scores, axis=1)
        v1, v2 = _parts(v_ptr, offs_j, mask_j, sv_s, DV, XA, XB)
        acc1 = tl.dot(scores.to(v1.dtype), v1, acc1, input_precision=PRECISION)
        acc2 = tl.dot(scores.to(v2.dtype), v2, acc2, input_precision=PRECISION)
    alpha = _normalise_rows(qn, M, ALPHA, GAMMA, bh, S, offs_r, mask_r, store_rows, eps, SIG, NORMALIZE, BR)
    return acc1 * alpha[:, None], acc2 * alpha[:, None], b, hd, offs_r, mask_r


@triton.jit
def _fwd_head_kernel(Q, K, V, G, MX, M, H, ALPHA, GAMMA, S, NH, DK, DV,
                     sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sh_b, sh_h, sh_s, scale, eps,
                     SIG: tl.constexpr, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
                     BR: tl.constexpr, BJ: tl.constexpr, XA: tl.constexpr, XB: tl.constexpr):
    """Whole-head forward: h for a tile of rows, all head columns."""
    h1, h2, b, hd, offs_r, mask_r = _head_rows(Q, K, V, G, MX, M, ALPHA, GAMMA, S, NH, DK, DV, sq_b, sq_h, sq_s,
                                               sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, scale, eps, True, SIG,
                                               NORMALIZE, PRECISION, BR, BJ, XA, XB)
    _store_parts(H + b * sh_b + hd * sh_h, offs_r, mask_r, sh_s, DV, h1, h2, XA, XB)


@triton.jit
def _dq_head_kernel(DH, H, K, V, DQ, Q, G, MX, ALPHA, GAMMA, DELTA, QDQ, S, NH, DK, DV,
                    sdh_b, sdh_h, sdh_s, sh_b, sh_h, sh_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s,
                    sdq_b, sdq_h, sdq_s, sq_b, sq_h, sq_s, scale, PRECISION: tl.constexpr,
                    BR: tl.constexpr, BJ: tl.constexpr, XA: tl.constexpr, XB: tl.constexpr):
    """Whole-head dq for a tile of rows; also delta_t and the row-dot q . dq."""
    bh = tl.program_id(1)
    b, hd = (bh // NH).to(tl.int64), bh % NH
    k_ptr, v_ptr = K + b * sk_b + hd * sk_h, V + b * sv_b + hd * sv_h
    offs_r, mask_r, r_end = _end_aligned_rows(tl.program_id(0), S, BR)
    mx_r = tl.load(MX + bh * S + offs_r, mask=mask_r, other=0.0)
    alpha = tl.load(ALPHA + bh * S + offs_r, mask=mask_r, other=0.0)
    dh1, dh2 = _parts(DH + b * sdh_b + hd * sdh_h, offs_r, mask_r, sdh_s, DV, XA, XB)
    h1, h2 = _parts(H + b * sh_b + hd * sh_h, offs_r, mask_r, sh_s, DV, XA, XB)
    dh_h = (tl.sum(dh1.to(tl.float32) * h1.to(tl.float32), axis=1)
            + tl.sum(dh2.to(tl.float32) * h2.to(tl.float32), axis=1))
    delta = tl.load(GAMMA + bh * S + offs_r, mask=mask_r, other=0.0) * dh_h
    acc1 = tl.zeros((BR, XA), dtype=tl.float32)
    acc2 = tl.zeros((BR, XB), dtype=tl.float32)
    for j0 in range(0, r_end, BJ):
        offs_j, mask_j, decay = _column_step(G, bh, S, j0, mx_r, offs_r, mask_r, BJ)
        v1, v2 = _parts(v_ptr, offs_j, mask_j, sv_s, DV, XA, XB)
        ds = (_dot_parts(dh1, dh2, v1, v2, PRECISION) * alpha[:, None] + delta[:, None]) * decay
        k1, k2 = _parts(k_ptr, offs_j, mask_j, sk_s, DK, XA, XB)
        acc1 = tl.dot(ds.to(k1.dtype), k1, acc1, input_precision=PRECISION)
        acc2 = tl.dot(ds.to(k2.dtype), k2, acc2, input_precision=PRECISION)
    dq1, dq2 = acc1 * scale, acc2 * scale
    _store_parts(DQ + b * sdq_b + hd * sdq_h, offs_r, mask_r, sdq_s, DK, dq1, dq2, XA, XB)
    q1, q2 = _parts(Q + b * sq_b + hd * sq_h, offs_r, mask_r, sq_s, DK, XA, XB)
    qdq = tl.sum(q1.to(tl.float32) * dq1, axis=1) + tl.sum(q2.to(tl.float32) * dq2, axis=1)
    tl.store(QDQ + bh * S + offs_r, qdq, mask=mask_r)
    tl.store(DELTA + bh * S + offs_r, delta, mask=mask_r)


@triton.jit
def _dkdv_head_kernel(Q, K, V, DH, DK_OUT, DV_OUT, G, MX, ALPHA, DELTA, KDK, S, NH, DK, DV,
                      sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sdh_b, sdh_h, sdh_s,
                      sdk_b, sdk_h, sdk_s, sdv_b, sdv_h, sdv_s, scale, PRECISION: tl.constexpr,
                      BR: tl.constexpr, BJ: tl.constexpr, XA: tl.constexpr, XB: tl.constexpr):
    """Whole-head dk and dv for a tile of columns s: sums over the rows t >= s. Column tiles start at 0, so a partial
    tile is the last one, whose loop over the rows is shortest."""
    bh = tl.program_id(1)
    c0 = tl.program_id(0) * BJ
    b, hd = (bh // NH).to(tl.int64), bh % NH
    q_ptr, dh_ptr = Q + b * sq_b + hd * sq_h, DH + b * sdh_b + hd * sdh_h
    offs_c = c0 + tl.arange(0, BJ)
    mask_c = offs_c < S
    g_c = tl.load(G + bh * S + offs_c, mask=mask_c, other=0.0)
    k1, k2 = _parts(K + b * sk_b + hd * sk_h, offs_c, mask_c, sk_s, DK, XA, XB)
    v1, v2 = _parts(V + b * sv_b + hd * sv_h, offs_c, mask_c, sv_s, DV, XA, XB)
    acc_k1 = tl.zeros((BJ, XA), dtype=tl.float32)
    acc_k2 = tl.zeros((BJ, XB), dtype=tl.float32)
    acc_v1 = tl.zeros((BJ, XA), dtype=tl.float32)
    acc_v2 = tl.zeros((BJ, XB), dtype=tl.float32)
    for t0 in range(c0 - c0 % BR, S, BR):
        offs_t, mask_t, alpha, delta, decay = _dkdv_rows(MX, ALPHA, DELTA, bh, S, t0, g_c, offs_c, mask_c, BR)
        q1, q2 = _parts(q_ptr, offs_t, mask_t, sq_s, DK, XA, XB)
        dh1, dh2 = _parts(dh_ptr, offs_t, mask_t, sdh_s, DV, XA, XB)
        p = (_dot_parts(k1, k2, q1, q2, PRECISION) * scale * decay * alpha[None, :]).to(dh1.dtype)
        ds = ((_dot_parts(v1, v2, dh1, dh2, PRECISION) * alpha[None, :] + delta[None, :]) * decay).to(q1.dtype)
        acc_v1 = tl.dot(p, dh1, acc_v1, input_precision=PRECISION)
        acc_v2 = tl.dot(p, dh2, acc_v2, input_precision=PRECISION)
        acc_k1 = tl.dot(ds, q1, acc_k1, input_precision=PRECISION)
        acc_k2 = tl.dot(ds, q2, acc_k2, input_precision=PRECISION)
    dk1, dk2 = acc_k1 * scale, acc_k2 * scale
    _store_parts(DK_OUT + b * sdk_b + hd * sdk_h, offs_c, mask_c, sdk_s, DK, dk1, dk2, XA, XB)
    _store_parts(DV_OUT + b * sdv_b + hd * sdv_h, offs_c, mask_c, sdv_s, DV, acc_v1, acc_v2, XA, XB)
    kdk = tl.sum(k1.to(tl.float32) * dk1, axis=1) + tl.sum(k2.to(tl.float32) * dk2, axis=1)
    tl.store(KDK + bh * S + offs_c, kdk, mask=mask_c)


@triton.jit
def _packed_gate_grad_kernel(QDQ, KDK, QK, V, DQK, DV_OUT, S, NH, W_QK, W_V, C_QK, C_V, sqk_b, sqk_s, sv_b, sv_s,
                             ROW_QK, ROW_V, SIG: tl.constexpr, BS: tl.constexpr, BH: tl.constexpr,
                             BP: tl.constexpr, BT: tl.constexpr):
    """The gate gradients of BT tokens of one sequence (all heads), written into both packed gradients (the gates are
    the sums of their shares in QK and V, at columns C_QK + [head | NH + head] and C_V + ...), and zeros into the
    padding columns after them: d log i_s = k_s . dk_s and d F_t = q_t . dq_t - k_t . dk_t, where log f_r enters
    every F_t with t >= r (the program's own tokens' reverse cumulative sum plus the sum over the tokens after them).
    Tokens run along the tile's rows, heads along its columns, so each token's gate columns are read and written
    together. QK and V are read through their (batch, token) strides; the gradients' rows are ROW_QK / ROW_V elements
    apart (their widths when dense; DV_OUT may be a column slice of a wider tensor)."""
    b = tl.program_id(0).to(tl.int64)
    heads = tl.arange(0, BH)
    offs = tl.program_id(1) * BT + tl.arange(0, BT)
    mask = (offs < S)[:, None] & (heads < NH)[None, :]
    rows = (b * NH + heads[None, :]) * S + offs[:, None]
    kdk = tl.load(KDK + rows, mask=mask, other=0.0)
    later = (tl.program_id(1) + 1) * BT + tl.arange(0, BS)
    later_mask = (later < S)[:, None] & (heads < NH)[None, :]
    later_rows = (b * NH + heads[None, :]) * S + later[:, None]
    after = tl.sum(tl.load(QDQ + later_rows, mask=later_mask, other=0.0)
                   - tl.load(KDK + later_rows, mask=later_mask, other=0.0), axis=0)
    d_lf = tl.cumsum(tl.load(QDQ + rows, mask=mask, other=0.0) - kdk, axis=0, reverse=True) + after[None, :]
    qk_gates = QK + b * sqk_b + offs[:, None] * sqk_s + C_QK + heads[None, :]
    v_gates = V + b * sv_b + offs[:, None] * sv_s + C_V + heads[None, :]
    f = (tl.load(qk_gates + NH, mask=mask, other=0.0).to(tl.float32)
         + tl.load(v_gates + NH, mask=mask, other=0.0).to(tl.float32))
    di = kdk
    if SIG:
        i = tl.load(qk_gates, mask=mask, other=0.0).to(tl.float32) + tl.load(v_gates, mask=mask, other=0.0).to(
            tl.float32)
        di = kdk * tl.sigmoid(-i)
    df = d_lf * tl.sigmoid(-f)
    _store_gate_grads(DQK + b * S * ROW_QK + C_QK, ROW_QK, W_QK - C_QK, di, df, offs, S, heads, NH, BP, BT)
    _store_gate_grads(DV_OUT + b * S * ROW_V + C_V, ROW_V, W_V - C_V, di, df, offs, S, heads, NH, BP, BT)


@triton.jit
def _store_gate_grads(base, row, width, di, df, offs, S, heads, NH, BP: tl.constexpr, BT: tl.constexpr):
    """di, df (tokens offs x heads) at columns heads and NH + heads of the rows `row` elements apart from `base`
    (each token's gate columns), zeros at the padding columns from 2 NH up to `width`."""
    rows = base + offs * row
    mask = (offs < S)[:, None] & (heads < NH)[None, :]
    tl.store(rows[:, None] + heads[None, :], di.to(base.dtype.element_ty), mask=mask)
    tl.store(rows[:, None] + NH + heads[None, :], df.to(base.dtype.element_ty), mask=mask)
    pad = 2 * NH + tl.arange(0, BP)
    tl.store(rows[:, None] + pad[None, :], tl.zeros((BT, BP), dtype=base.dtype.element_ty),
             mask=(offs < S)[:, None] & (pad < width)[None, :])


def _strides(x: torch.Tensor) -> tuple[int, int, int]:
    """(batch, head, sequence) strides of a (B, NH, S, D) tensor."""
    return x.stride(0), x.stride(1), x.stride(2)


def _bsnd(like: torch.Tensor, d: int, dtype: torch.dtype) -> torch.Tensor:
    """An empty (B, NH, S, d) tensor stored as (B, S, NH, d), the layout of a layer's projections."""
    B, NH, S, _ = like.shape
    return torch.empty(B, S, NH, d, device=like.device, dtype=dtype).transpose(1, 2)


def _gate_rows(q: torch.Tensor, gates, sig: bool) -> tuple[torch.Tensor, ...]:
    """g, mx, m from the gate kernel and alpha, gamma to be written, each (B, NH, S) fp32. `gates` holds the
    (igate, fgate) views, or two such pairs whose sums are the gates."""
    B, NH, S, _ = q.shape
    g, mx, m, alpha, gamma = (q.new_empty(B, NH, S, dtype=torch.float32) for _ in range(5))
    shares = gates if len(gates) == 4 else (*gates, *gates)
    _gate_kernel[(B * NH,)](*shares, g, mx, m, S, NH, *(st for x in shares for st in x.stride()), SIG=sig,
                            TWO_SHARES=len(gates) == 4, BS=pow2_block(S))
    return g, mx, m, alpha, gamma


def _launch_head_rows(kernel, q, k, v, h, rows, sig: bool, normalize: bool, eps: float, *extra, **meta) -> None:
    """Launch `kernel`, `_fwd_head_kernel` or a kernel built on `_head_rows` whose arguments are those of
    `_fwd_head_kernel` followed by `extra` (and constexprs `meta`), on the whole-head tiles."""
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    br, bj, warps, stages = _whole_head_tiles("fwd", DK, DV)
    xa, xb = head_parts(DK, DV)
    g, mx, m, alpha, gamma = rows
    kernel[(triton.cdiv(S, br), B * NH)](
        q, k, v, g, mx, m, h, alpha, gamma, S, NH, DK, DV, *_strides(q), *_strides(k), *_strides(v), *_strides(h),
        DK**-0.5, eps, *extra, SIG=sig, NORMALIZE=normalize, PRECISION=_precision(q.dtype), BR=br, BJ=bj, XA=xa,
        XB=xb, num_warps=warps, num_stages=stages, **meta)


def _launch_forward(q, k, v, gates, sig: bool, normalize: bool, eps: float):
    """h (B, NH, S, DHV) stored as (B, S, NH, DHV), and g, mx, alpha, gamma (B, NH, S). `gates` as `_gate_rows`."""
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    rows = g, mx, m, alpha, gamma = _gate_rows(q, gates, sig)
    h = _bsnd(q, DV, q.dtype)
    if whole_head(DK, DV):
        _launch_head_rows(_fwd_head_kernel, q, k, v, h, rows, sig, normalize, eps)
    else:
        br, bj, bd, bx, warps, stages = _sliced_tiles("fwd", DK, DV)
        _fwd_kernel[(triton.cdiv(S, br) * triton.cdiv(DV, bx), B * NH)](
            q, k, v, g, mx, m, h, alpha, gamma, S, NH, DK, DV, *_strides(q), *_strides(k), *_strides(v),
            *_strides(h), DK**-0.5, eps, SIG=sig, NORMALIZE=normalize, PRECISION=_precision(q.dtype), BR=br, BJ=bj,
            BD=bd, BX=bx, num_warps=warps, num_stages=stages)
    return h, g, mx, alpha, gamma


def packed_whole_head_forward(kernel, qk: torch.Tensor, v: torch.Tensor, h: torch.Tensor, num_heads: int,
                              head_dim: int, sig: bool, *extra, normalize: bool = True, eps: float = 1e-6,
                              **meta) -> None:
    """Run `kernel` (built on `_head_rows`; arguments as `_launch_head_rows` says) on packed projections with
    head_dim_qk = head_dim_v = head_dim (unit column strides; `whole_head(head_dim, head_dim)` must hold), h the
    (B, S, NH * DH) output it may write. For ops that fuse more into the cell's forward
    (xlstm_core/cell_gate_triton.py)."""
    q, k, vv, shares = unpack(qk, v, num_heads, head_dim, head_dim)
    _launch_head_rows(kernel, q, k, vv, h.unflatten(-1, (num_heads, head_dim)).transpose(1, 2),
                      _gate_rows(q, shares, sig), sig, normalize, eps, *extra, **meta)


def _launch_backward(dh, q, k, v, h, g, mx, alpha, gamma, dq, dk, dv) -> tuple[torch.Tensor, torch.Tensor]:
    """Write dq, dk, dv (any strides) and return the fp32 row-dots q . dq and k . dk (B, NH, S)."""
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    if dh.stride(-1) != 1:
        dh = dh.contiguous()
    delta = torch.empty(B, NH, S, device=q.device, dtype=torch.float32)
    dq_args = (dh, h, k, v, dq, q, g, mx, alpha, gamma, delta)
    dq_strides = (*_strides(dh), *_strides(h), *_strides(k), *_strides(v), *_strides(dq), *_strides(q))
    dkdv_args = (q, k, v, dh, dk, dv, g, mx, alpha, delta)
    dkdv_strides = (*_strides(q), *_strides(k), *_strides(v), *_strides(dh), *_strides(dk), *_strides(dv))
    precision = _precision(q.dtype)
    if whole_head(DK, DV):
        xa, xb = head_parts(DK, DV)
        qdq, kdk = (torch.empty(B, NH, S, device=q.device, dtype=torch.float32) for _ in range(2))
        br, bj, warps, stages = _whole_head_tiles("dq", DK, DV)
        _dq_head_kernel[(triton.cdiv(S, br), B * NH)](
            *dq_args, qdq, S, NH, DK, DV, *dq_strides, DK**-0.5, PRECISION=precision, BR=br, BJ=bj, XA=xa, XB=xb,
            num_warps=warps, num_stages=stages)
        br, bj, warps, stages = _whole_head_tiles("dkdv", DK, DV)
        _dkdv_head_kernel[(triton.cdiv(S, bj), B * NH)](
            *dkdv_args, kdk, S, NH, DK, DV, *dkdv_strides, DK**-0.5, PRECISION=precision, BR=br, BJ=bj, XA=xa,
            XB=xb, num_warps=warps, num_stages=stages)
        return qdq, kdk
    br, bj, bd, bx, warps, stages = _sliced_tiles("dq", DK, DV)
    n_xq = triton.cdiv(DK, bx)
    qdq = torch.empty(n_xq, B, NH, S, device=q.device, dtype=torch.float32)
    _dq_kernel[(triton.cdiv(S, br) * n_xq, B * NH)](
        *dq_args, qdq, S, NH, DK, DV, *dq_strides, DK**-0.5, PRECISION=precision, BR=br, BJ=bj, BD=bd, BX=bx,
        num_warps=warps, num_stages=stages)
    br, bj, bd, bx, warps, stages = _sliced_tiles("dkdv", DK, DV)
    n_x = triton.cdiv(max(DK, DV), bx)
    kdk = torch.empty(n_x, B, NH, S, device=q.device, dtype=torch.float32)
    _dkdv_kernel[(triton.cdiv(S, bj) * n_x, B * NH)](
        *dkdv_args, kdk, S, NH, DK, DV, *dkdv_strides, DK**-0.5, PRECISION=precision, BR=br, BJ=bj, BD=bd, BX=bx,
        num_warps=warps, num_stages=stages)
    return qdq.sum(0), kdk.sum(0)


@torch.library.custom_op("xlstm_kit::mlstm_parallel_fwd", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, igate: torch.Tensor, fgate: torch.Tensor, sig: bool,
             normalize: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                   torch.Tensor]:
    """h (B, S, NH * DHV) and the per-row fp32 values the backward needs: g, mx, alpha, gamma, each (B, NH, S).
    Not exported: `mlstm_parallel_triton` is the entry point.

    h leaves the op 3-D: inductor's layout optimisation (on in graphs with convolutions, such as ViL's) gives a 4-D
    tensor saved for the backward a channels-last copy, and for (B, S, NH, DHV) that is a token-fastest copy of h
    (38.5 MB per ViL-T block, written with a 196-element stride)."""
    h, *rows = _launch_forward(q, k, v, (igate, fgate), sig, normalize, eps)
    return h.transpose(1, 2).flatten(2), *rows


@_forward.register_fake
def _(q, k, v, igate, fgate, sig, normalize, eps):
    B, NH, S, _ = q.shape
    row = lambda: q.new_empty(B, NH, S, dtype=torch.float32)
    return q.new_empty(B, S, NH * v.shape[-1]), row(), row(), row(), row()


@torch.library.custom_op("xlstm_kit::mlstm_parallel_bwd", mutates_args=())
def _backward(dh: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: torch.Tensor, g: torch.Tensor,
              mx: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor]:
    """dq, dk, dv and the fp32 row-dots q . dq, k . dk (B, NH, S) from which the gate gradients follow; h and dh
    (B, S, NH * DHV) as the forward op returns h."""
    NH, DK, DV = q.shape[1], q.shape[-1], v.shape[-1]
    dq, dk, dv = _bsnd(q, DK, q.dtype), _bsnd(k, DK, k.dtype), _bsnd(v, DV, v.dtype)
    heads = lambda x: x.unflatten(-1, (NH, DV)).transpose(1, 2)
    qdq, kdk = _launch_backward(heads(dh), q, k, v, heads(h), g, mx, alpha, gamma, dq, dk, dv)
    return dq, dk, dv, qdq, kdk


@_backward.register_fake
def _(dh, q, k, v, h, g, mx, alpha, gamma):
    B, NH, S, DK = q.shape
    row = lambda: q.new_empty(B, NH, S, dtype=torch.float32)
    return _bsnd(q, DK, q.dtype), _bsnd(k, DK, k.dtype), _bsnd(v, v.shape[-1], v.dtype), row(), row()


def _setup_context(ctx, inputs, output):
    q, k, v, igate, fgate, sig, _, _ = inputs
    h, g, mx, alpha, gamma = output
    ctx.sig = sig
    ctx.set_materialize_grads(False)  # the rows never leave the op: no zero gradients for them in eager autograd
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


@torch.library.custom_op("xlstm_kit::mlstm_parallel_packed_fwd", mutates_args=())
def _packed_forward(qk: torch.Tensor, v: torch.Tensor, num_heads: int, dk: int, dv: int, sig: bool, normalize: bool,
                    eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_forward` on packed projections (see `mlstm_parallel_packed_triton`); h as (B, S, NH * DHV) for the same
    reason."""
    q, k, vv, shares = unpack(qk, v, num_heads, dk, dv)
    h, *rows = _launch_forward(q, k, vv, shares, sig, normalize, eps)
    return h.transpose(1, 2).flatten(2), *rows


@_packed_forward.register_fake
def _(qk, v, num_heads, dk, dv, sig, normalize, eps):
    B, S = qk.shape[:2]
    row = lambda: qk.new_empty(B, num_heads, S, dtype=torch.float32)
    return qk.new_empty(B, S, num_heads * dv), row(), row(), row(), row()


def packed_backward_into(dh: torch.Tensor, qk: torch.Tensor, v: torch.Tensor, h: torch.Tensor, g: torch.Tensor,
                         mx: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, num_heads: int, dk: int,
                         dv: int, sig: bool, d_qk: torch.Tensor, d_v: torch.Tensor) -> None:
    """`_packed_backward` into given gradients: d_qk dense of qk's shape; d_v with any row stride whose batch stride
    is S rows (a column slice of a wider (B, S, W) tensor, e.g. the up-projection's gradient) and at least v's
    width: its columns after the gate shares are zeroed up to its own width (e.g. the up-projection's padding)."""
    B, S = qk.shape[:2]
    q, k, vv, _ = unpack(qk, v, num_heads, dk, dv)
    dq, dkk, dvv, _ = unpack(d_qk, d_v, num_heads, dk, dv)
    heads = lambda x: x.unflatten(-1, (num_heads, dv)).transpose(1, 2)
    qdq, kdk = _launch_backward(heads(dh), q, k, vv, heads(h), g, mx, alpha, gamma, dq, dkk, dvv)
    pad = max(qk.shape[-1] - 2 * num_heads * (dk + 1), d_v.shape[-1] - num_heads * (dv + 2))
    bt = INTERPRETER_GATE_GRAD_TOKENS if interpreter_enabled() else GATE_GRAD_TOKENS
    _packed_gate_grad_kernel[(B, triton.cdiv(S, bt))](
        qdq, kdk, qk, v, d_qk, d_v, S, num_heads, qk.shape[-1], d_v.shape[-1], 2 * num_heads * dk, num_heads * dv,
        qk.stride(0), qk.stride(1), v.stride(0), v.stride(1), d_qk.stride(1), d_v.stride(1), SIG=sig,
        BS=pow2_block(S), BH=pow2_block(num_heads, low=1), BP=pow2_block(pad, low=1), BT=bt)


@torch.library.custom_op("xlstm_kit::mlstm_parallel_packed_bwd", mutates_args=())
def _packed_backward(dh: torch.Tensor, qk: torch.Tensor, v: torch.Tensor, h: torch.Tensor, g: torch.Tensor,
                     mx: torch.Tensor, alpha: torch.Tensor, gamma: torch.Tensor, num_heads: int, dk: int, dv: int,
                     sig: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of both packed projections, each written whole by the kernels (q, k, v columns by the backward
    kernels, gate and padding columns by `_packed_gate_grad_kernel`), so no concatenation follows."""
    d_qk, d_v = torch.empty_like(qk, memory_format=torch.contiguous_format), torch.empty_like(
        v, memory_format=torch.contiguous_format)
    packed_backward_into(dh, qk, v, h, g, mx, alpha, gamma, num_heads, dk, dv, sig, d_qk, d_v)
    return d_qk, d_v


@_packed_backward.register_fake
def _(dh, qk, v, h, g, mx, alpha, gamma, num_heads, dk, dv, sig):
    return (torch.empty_like(qk, memory_format=torch.contiguous_format),
            torch.empty_like(v, memory_format=torch.contiguous_format))


def _packed_setup_context(ctx, inputs, output):
    qk, v, ctx.num_heads, ctx.dk, ctx.dv, ctx.sig, _, _ = inputs
    ctx.set_materialize_grads(False)  # as `_setup_context`
    ctx.save_for_backward(qk, v, *output)


def _packed_autograd_backward(ctx, dh, *_):
    qk, v, h, g, mx, alpha, gamma = ctx.saved_tensors
    d_qk, d_v = _packed_backward(dh, qk, v, h, g, mx, alpha, gamma, ctx.num_heads, ctx.dk, ctx.dv, ctx.sig)
    return d_qk, d_v, None, None, None, None, None, None


_packed_forward.register_autograd(_packed_autograd_backward, setup_context=_packed_setup_context)


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
    h = _forward(q, k, v, igate, fgate, variant == "sig", normalize, float(eps))[0]
    return h.unflatten(-1, (q.shape[1], v.shape[-1])).transpose(1, 2)


def mlstm_parallel_packed_triton(qk: torch.Tensor, v: torch.Tensor, *, num_heads: int, head_dim_qk: int,
                                 head_dim_v: int, variant: str = "exp", normalize: bool = True,
                                 eps: float = 1e-6) -> torch.Tensor:
    """`mlstm_parallel_triton` on packed projections (layout: `kernels.mlstm.mlstm_packed`); returns h
    (B, S, NH, DHV). The backward writes each packed gradient whole (gate columns included, padding zero)."""
    S = qk.shape[1]
    if S > MAX_LEN:
        raise ValueError(f"the fused parallel mLSTM takes sequences of at most {MAX_LEN} tokens, got S={S}")
    if qk.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the Triton mLSTM kernels take fp16/bf16/fp32 inputs, got {qk.dtype}")
    qk, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (qk, v))  # the kernels read unit column strides
    h = _packed_forward(qk, v, num_heads, head_dim_qk, head_dim_v, variant == "sig", normalize, float(eps))[0]
    return h.unflatten(-1, (num_heads, head_dim_v))


def packed_forward_residuals(qk: torch.Tensor, v: torch.Tensor, num_heads: int, head_dim: int, sig: bool,
                             normalize: bool = True, eps: float = 1e-6) -> tuple[torch.Tensor, ...]:
    """For ops that fuse the cell into a larger op with its own backward (xlstm_core/mixer_triton.py): h (B, S,
    NH * DH) and the per-row fp32 values g, mx, alpha, gamma (B, NH, S) that `packed_backward_into` takes, on
    packed projections with head_dim_qk = head_dim_v = head_dim (unit column strides). No autograd graph."""
    return _packed_forward(qk, v, num_heads, head_dim, head_dim, sig, normalize, float(eps))


__all__ = ["MAX_LEN", "mlstm_parallel_packed_triton", "mlstm_parallel_triton", "packed_backward_into",
           "packed_forward_residuals"]
