"""Chunkwise-parallel mLSTM in Triton, tiled inside each chunk (TFLA), forward and backward, exp and sig variants.

Per sequence the tokens are cut into chunks (kernels/mlstm/chunk_layout.py). Forward:
  1. log input gates and chunk-local cumulative log forget gates b (fp32): formed by the first kernel of step 2 when
     it holds a chunk whole (chunks up to 256 tokens; 128 for fp32), else by `_gate_kernel` before it.
  2. `chunk_states` (kernels/mlstm/chunk_states_triton.py): the stabilised memory (C, n, m) at every chunk boundary,
     from a parallel per-chunk product and an elementwise scan across the chunks.
  3. `_scores_kernel`: each chunk's causal, gate-weighted scores P (L x L, in the inputs' dtype), once per chunk,
     tiled along the chunk's rows and columns (second level of sequence parallelism), plus the row stabilisers and
     normaliser sums.
  4. `_intra_kernel`: every output tile (rows of one chunk x a block of DHV) as the boundary state's contribution
     plus P times the chunk's values: two plain matrix products, with no score recomputed per column block. For
     16-bit inputs on sm_90+ GPUs the forward runs it as `_intra_fwd_kernel`, whose loads are TMA copies.
Backward reuses the forward's gates and boundary states (kept in the inputs' dtype: for bf16, (S / L + 1) * NH *
DHQK * DHV * 2 bytes per sequence between forward and backward, e.g. 0.54 GB at S = 65,536, NH = 8, DHQK = 256,
DHV = 512, L = 256), walks the chunks in reverse for the state gradients (same two kernels), forms the scores of
(dnum, v) once for dq and, transposed, dk, reuses the forward's P for dv, and gets dq, dk, dv from the intra kernel in
three more modes (rows t / columns s for dq; rows s / columns t >= s for dk and dv). The forward's scores (n_chunks *
NH * L * L elements, 0.27 GB at the shape above) are kept for the backward instead of recomputed (one scores launch,
~0.47 ms at that shape on an H100, for 0.27 GB more between the passes); the backward's own score buffer lives
during the backward only.

Every product the kernels form has one shape:
  out[r] = sum_j P(r, j) * X_j + rho_r * sigma_m * (A_r @ M + a_r * U),
  P(t, s) = sigma_x * ((A_t . B_s) * sigma_ab + a_t) * W(t, s)
with W(t, s) = exp(b_t - b_s + li_s - m_t) for s <= t (the decay from s to t), rho the weight of the chunk-boundary
state M, and (a, U) an optional rank-1 term that carries the normaliser's gradient. The mode table in `_intra` says
what A, P, X, M are for h, dq, dk and dv.

Gradients: the stabiliser m is treated as a constant inside a chunk (its effect on h is through eps only), except
that the last state's m is differentiated exactly (it picks which gate a loss on the last state reaches). Gate
gradients follow from dq, dk: d log i_s = k_s . dk_s and d log f_r = sum over t >= r of (q_t . dq_t - k_t . dk_t).
For the sig variant a given initial state with m != 0 is folded into (C, n) as exp(m) * (C, n); its last state has
m = 0.

Tiles: each launch uses the config its mode pins (kernels/mlstm/tiles_triton.py); KERNELS_TRITON_AUTOTUNE=1 autotunes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.dispatch import interpreter_enabled
from kernels.mlstm.chunk_layout import ChunkLayout, chunk_layout
from kernels.mlstm.chunk_states_triton import (
    chunk_base,
    chunk_gates,
    chunk_states,
    local_holds_chunk,
    state_buffers,
)
from kernels.mlstm.chunk_states_triton import pow2_block as _pow2
from kernels.mlstm.reference import MLSTMState
from kernels.mlstm.tiles_triton import TileChoice
from kernels.mlstm.tma import rows_descriptor, states_descriptor, tma_applies

# Modes of the rank-1 term of the intra kernel: none, a = per-row scalar (b = 1), b = per-column scalar (a = 1).
_AUG_NONE, _AUG_ROWS, _AUG_COLS = 0, 1, 2


@triton.jit
def _gate_kernel(IG, FG, GB, GLI, GMAX, CHUNKS, n_chunks, NH, S, SIG: tl.constexpr, BLOCK: tl.constexpr):
    """The gates of one chunk (`chunk_gates`), for chunks the forward local kernel does not hold whole."""
    length, base, _ = chunk_base(CHUNKS, tl.program_id(0), n_chunks, NH, S, tl.program_id(1))
    chunk_gates(IG + base, FG + base, GB + base, GLI + base, GMAX + base, length, True, SIG, BLOCK)


@triton.jit
def _load_rows(ptr, offs_r, mask_r, d0, offs_d, D):
    """Rows offs_r, columns d0 + offs_d of a row-major (rows, D) block that starts at ptr (32-bit tile offsets)."""
    dd = d0 + offs_d
    return tl.load(ptr + offs_r[:, None] * D + dd[None, :], mask=mask_r[:, None] & (dd < D)[None, :], other=0.0)


@triton.jit
def _scores_kernel(
    A, BM, P, AUG, STV, GB, GLI, GMAX, MROWS, QN, MSTATE, CHUNKS,
    n_chunks, NH, S, sigma_ab, sigma_x, sigma_m,
    L: tl.constexpr, DA: tl.constexpr, FWD: tl.constexpr, AUG_ROWS: tl.constexpr, SIG: tl.constexpr,
    PRECISION: tl.constexpr, BD: tl.constexpr, BR: tl.constexpr, BJ: tl.constexpr,
):
    """BR rows of one chunk's weighted scores P[t, s] = ((A_t . B_s) * sigma_ab + aug_t) * sigma_x * W(t, s) for
    s <= t, written to the chunk's L x L block of P (columns s < the tile's last row + 1; the rest is never read).

    FWD also derives the row stabiliser m_t (from the gate kernel's running max) and the normaliser's q.n sum
    (in-chunk part from the fp32 scores, boundary part rho * sigma_m * A_t . n) and stores both; otherwise m_t is read
    (MROWS). The sum must come from the unrounded scores: its terms cancel.
    """
    r0 = tl.program_id(0) * BR
    chunk = tl.program_id(1)
    head = tl.program_id(2)
    length, tok0, slot = chunk_base(CHUNKS, chunk, n_chunks, NH, S, head)
    if r0 >= length:
        return
    a_ptr, bm_ptr = A + tok0 * DA, BM + tok0 * DA
    gb_ptr, gli_ptr, mrows_ptr = GB + tok0, GLI + tok0, MROWS + tok0
    p_ptr = P + (chunk.to(tl.int64) * NH + head) * (L * L)
    offs_r = r0 + tl.arange(0, BR)
    mask_r = offs_r < length
    j_hi = tl.minimum(r0 + BR, length)
    b_r = tl.load(gb_ptr + offs_r, mask=mask_r, other=0.0)
    state = slot * NH + head  # the state before the chunk
    if SIG:
        m_state = 0.0
        m_r = tl.zeros((BR,), dtype=tl.float32)
    elif FWD:
        # m_t = b_t + max(m_state, max_{s <= t} (li_s - b_s)), the running max from the gate kernel
        m_state = tl.load(MSTATE + state)
        run = tl.load(GMAX + tok0 + offs_r, mask=mask_r, other=0.0)
        m_r = tl.where(mask_r, b_r + tl.maximum(run, m_state), 0.0)
    else:
        m_r = tl.load(mrows_ptr + offs_r, mask=mask_r, other=0.0)
    if AUG_ROWS:
        aug_r = tl.load(AUG + tok0 + offs_r, mask=mask_r, other=0.0)

    offs_d = tl.arange(0, BD)
    if BD >= DA:
        a_res = _load_rows(a_ptr, offs_r, mask_r, 0, offs_d, DA)
    qn = tl.zeros((BR,), dtype=tl.float32)
    for j0 in range(0, j_hi, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mask_j = offs_j < j_hi
        if BD >= DA:
            scores = tl.dot(a_res, tl.trans(_load_rows(bm_ptr, offs_j, mask_j, 0, offs_d, DA)),
                            input_precision=PRECISION)
        else:
            scores = tl.zeros((BR, BJ), dtype=tl.float32)
            for d0 in range(0, DA, BD):
                a = _load_rows(a_ptr, offs_r, mask_r, d0, offs_d, DA)
                bm = _load_rows(bm_ptr, offs_j, mask_j, d0, offs_d, DA)
                scores = tl.dot(a, tl.trans(bm), scores, input_precision=PRECISION)
        scores = scores * sigma_ab
        if AUG_ROWS:
            scores += aug_r[:, None]
        b_j = tl.load(gb_ptr + offs_j, mask=mask_j, other=0.0)
        li_j = tl.load(gli_ptr + offs_j, mask=mask_j, other=0.0)
        log_w = b_r[:, None] - b_j[None, :] + li_j[None, :] - m_r[:, None]
        ok = (offs_j[None, :] <= offs_r[:, None]) & mask_r[:, None] & mask_j[None, :]
        p = tl.where(ok, scores * (tl.exp(log_w) * sigma_x), 0.0)
        if FWD:
            qn += tl.sum(p, axis=1)
        tl.store(p_ptr + offs_r[:, None] * L + offs_j[None, :], p.to(P.dtype.element_ty),
                 mask=mask_r[:, None] & mask_j[None, :])
    if FWD:
        qn_state = tl.zeros((BR,), dtype=tl.float32)
        for d0 in range(0, DA, BD):
            dd = d0 + offs_d
            nv = tl.load(STV + state * DA + dd, mask=dd < DA, other=0.0)
            if BD >= DA:
                a = a_res
            else:
                a = _load_rows(a_ptr, offs_r, mask_r, d0, offs_d, DA)
            qn_state += tl.sum(a.to(tl.float32) * nv[None, :], axis=1)
        rho = tl.where(mask_r, tl.exp(b_r + m_state - m_r), 0.0)
        tl.store(mrows_ptr + offs_r, m_r, mask=mask_r)
        tl.store(QN + tok0 + offs_r, qn + rho * sigma_m * qn_state, mask=mask_r)


@triton.jit
def _output_tile(CHUNKS, n_chunks, NH, S, DX, BX: tl.constexpr, BR: tl.constexpr):
    """This program's output tile of the intra kernels (grid: row tiles x column blocks, chunks, heads): its chunk,
    head, column block, first row, and the chunk's length, first token and start slot."""
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    head = tl.program_id(2)
    n_xt = tl.cdiv(DX, BX)
    length, tok0, slot = chunk_base(CHUNKS, chunk, n_chunks, NH, S, head)
    return chunk, head, pid % n_xt, (pid // n_xt) * BR, length, tok0, slot


@triton.jit
def _row_weights(GB, MROWS, MSTATE, tok0, offs_r, mask_r, state, SIG: tl.constexpr):
    """Rows t of a chunk read forwards (h, dq): their stabiliser m_t (0 for sig) and the boundary state's weight
    rho_t = exp(b_t + m_state - m_t) (0 past the chunk)."""
    b_r = tl.load(GB + tok0 + offs_r, mask=mask_r, other=0.0)
    if SIG:
        m_r = tl.zeros(offs_r.shape, dtype=tl.float32)
        rho = tl.exp(b_r)
    else:
        m_r = tl.load(MROWS + tok0 + offs_r, mask=mask_r, other=0.0)
        rho = tl.exp(b_r + tl.load(MSTATE + state) - m_r)
    return m_r, tl.where(mask_r, rho, 0.0)


@triton.jit
def _denominator(qn, m_r, eps, SIG: tl.constexpr, NORMALIZE: tl.constexpr):
    """The output's normaliser max(|q.n|, exp(-m)) + eps (exp), max(|q.n|, 1) + eps (sig), or 1 (sig unnormalised)."""
    if SIG:
        if NORMALIZE:
            return tl.maximum(tl.abs(qn), 1.0) + eps
        return tl.full(qn.shape, 1.0, dtype=tl.float32)
    return tl.maximum(tl.abs(qn), tl.exp(-m_r)) + eps


@triton.jit
def _intra_kernel(
    A, P, X, OUT, STM, STV, AUG, R, RDOT, GB, GLI, MROWS, QN, MSTATE, CHUNKS,
    n_chunks, NH, S, stride_ma, stride_mx, rdot_stride, sigma_m, eps,
    L: tl.constexpr, DA: tl.constexpr, DX: tl.constexpr, REVERSE: tl.constexpr, FWD: tl.constexpr,
    AUG_MODE: tl.constexpr, ROWDOT: tl.constexpr, SIG: tl.constexpr, NORMALIZE: tl.constexpr,
    PRECISION: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, BJ: tl.constexpr, BX: tl.constexpr,
):
    """One (BR rows x BX columns) output tile of one chunk and head; see the module docstring for the product.

    The boundary-state product runs first, in slices of BK, into the one accumulator; the in-chunk product then
    adds the weighted scores (P, from `_scores_kernel`; transposed for the reverse modes) times the X rows.
    """
    chunk, head, xt, r0, length, tok0, slot = _output_tile(CHUNKS, n_chunks, NH, S, DX, BX, BR)
    if r0 >= length:
        return
    # the chunk's own base pointers keep every tile offset below in 32 bits
    a_ptr, x_ptr, out_ptr = A + tok0 * DA, X + tok0 * DX, OUT + tok0 * DX
    gb_ptr, gli_ptr = GB + tok0, GLI + tok0
    p_ptr = P + (chunk.to(tl.int64) * NH + head) * (L * L)
    offs_r = r0 + tl.arange(0, BR)
    mask_r = offs_r < length
    offs_x = xt * BX + tl.arange(0, BX)
    mask_x = offs_x < DX
    if REVERSE:
        state = (slot + 1) * NH + head  # columns t >= s: the state after the chunk, fed by the rows s
        if SIG:
            m_state = 0.0
        else:
            m_state = tl.load(MSTATE + state)
        b_r = tl.load(gb_ptr + offs_r, mask=mask_r, other=0.0)
        g = tl.load(gb_ptr + length - 1)
        li_r = tl.load(gli_ptr + offs_r, mask=mask_r, other=0.0)
        rho = tl.where(mask_r, tl.exp(g - b_r + li_r - m_state), 0.0)
        j_lo = r0
        j_hi = length
    else:
        state = slot * NH + head  # the state before the chunk, read by the rows t
        m_r, rho = _row_weights(GB, MROWS, MSTATE, tok0, offs_r, mask_r, state, SIG)
        j_lo = 0
        j_hi = tl.minimum(r0 + BR, length)

    # boundary state: acc = rho * sigma_m * (A @ M + a * U)
    offs_k = tl.arange(0, BK)
    acc = tl.zeros((BR, BX), dtype=tl.float32)
    m_ptr = STM + state * DA * DX
    for k0 in range(0, DA, BK):
        kk = k0 + offs_k
        mk = kk < DA
        a = _load_rows(a_ptr, offs_r, mask_r, k0, offs_k, DA)
        mt = tl.load(m_ptr + kk[:, None] * stride_ma + offs_x[None, :] * stride_mx, mask=mk[:, None] & mask_x[None, :],
                     other=0.0)
        acc = tl.dot(a, mt.to(a.dtype), acc, input_precision=PRECISION)
    if AUG_MODE != 0:
        u = tl.load(STV + state * DX + offs_x, mask=mask_x, other=0.0)
        if AUG_MODE == 1:
            acc += tl.load(AUG + tok0 + offs_r, mask=mask_r, other=0.0)[:, None] * u[None, :]
        else:
            acc += u[None, :]
    acc = acc * (rho * sigma_m)[:, None]

    # in-chunk causal product with the stored weighted scores
    for j0 in range(j_lo, j_hi, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mask_j = offs_j < j_hi
        if REVERSE:  # P[t, s] with t = column j >= s = row r
            ok = (offs_j[:, None] >= offs_r[None, :]) & mask_j[:, None] & mask_r[None, :]
            p = tl.trans(tl.load(p_ptr + offs_j[:, None] * L + offs_r[None, :], mask=ok, other=0.0))
        else:
            ok = (offs_j[None, :] <= offs_r[:, None]) & mask_r[:, None] & mask_j[None, :]
            p = tl.load(p_ptr + offs_r[:, None] * L + offs_j[None, :], mask=ok, other=0.0)
        xb = tl.load(x_ptr + offs_j[:, None] * DX + offs_x[None, :], mask=mask_j[:, None] & mask_x[None, :],
                     other=0.0)
        acc = tl.dot(p.to(xb.dtype), xb, acc, input_precision=PRECISION)

    out_offs = offs_r[:, None] * DX + offs_x[None, :]
    out_mask = mask_r[:, None] & mask_x[None, :]
    if FWD:
        denom = _denominator(tl.load(QN + tok0 + offs_r, mask=mask_r, other=0.0), m_r, eps, SIG, NORMALIZE)
        tl.store(out_ptr + out_offs, (acc / denom[:, None]).to(OUT.dtype.element_ty), mask=out_mask)
    else:
        tl.store(out_ptr + out_offs, acc.to(OUT.dtype.element_ty), mask=out_mask)
        if ROWDOT:
            rv = tl.load(R + tok0 * DX + out_offs, mask=out_mask, other=0.0)
            tl.store(RDOT + xt * rdot_stride + tok0 + offs_r, tl.sum(acc * rv.to(tl.float32), axis=1), mask=mask_r)


@triton.jit
def _intra_fwd_kernel(
    A_DESC, M_DESC, P_DESC, X_DESC, X, OUT, GB, MROWS, QN, MSTATE, CHUNKS, n_chunks, NH, S, sigma_m, eps,
    L: tl.constexpr, DA: tl.constexpr, DX: tl.constexpr, SIG: tl.constexpr, NORMALIZE: tl.constexpr,
    BK: tl.constexpr, BR: tl.constexpr, BJ: tl.constexpr, BX: tl.constexpr,
):
    """`_intra_kernel`'s forward mode (h) with its tiles loaded through TMA tensor descriptors (16-bit inputs, sm_90+):
    the copies bypass the registers, so a 128-row tile at 4 warps pipelines (0.81 against 0.93 ms per launch on an
    H100 at 64k tokens, DHQK 256, DHV 512; benchmarks/notes/mlstm_kernels.md, session 15).

    The descriptors span whole tensors, not chunks: q rows past the chunk give output rows that are not stored, and
    the chunk's diagonal tiles mask P (whose entries s > t are never written) and load X with a mask. Requires
    BR % BJ == 0, so that the tiles below the diagonal are whole.
    """
    chunk, head, xt, r0, length, tok0, slot = _output_tile(CHUNKS, n_chunks, NH, S, DX, BX, BR)
    if r0 >= length:
        return
    offs_r = r0 + tl.arange(0, BR)
    mask_r = offs_r < length
    x0 = xt * BX
    offs_x = x0 + tl.arange(0, BX)
    mask_x = offs_x < DX
    state = slot * NH + head
    m_r, rho = _row_weights(GB, MROWS, MSTATE, tok0, offs_r, mask_r, state, SIG)

    tok = tok0.to(tl.int32)  # descriptor coordinates are 32-bit (checked by the launcher)
    acc = tl.zeros((BR, BX), dtype=tl.float32)
    for k0 in range(0, DA, BK):
        a = A_DESC.load([tok + r0, k0])
        mt = M_DESC.load([state.to(tl.int32), k0, x0]).reshape(BK, BX)
        acc = tl.dot(a, mt, acc)
    acc = acc * (rho * sigma_m)[:, None]

    p_row = ((chunk * NH + head) * L + r0).to(tl.int32)
    for j0 in range(0, r0, BJ):  # whole tiles below the diagonal
        acc = tl.dot(P_DESC.load([p_row, j0]), X_DESC.load([tok + j0, x0]), acc)
    j_hi = tl.minimum(r0 + BR, length)
    for j0 in range(r0, j_hi, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mask_j = offs_j < j_hi
        ok = (offs_j[None, :] <= offs_r[:, None]) & mask_r[:, None] & mask_j[None, :]
        p = tl.where(ok, P_DESC.load([p_row, j0]), 0.0)
        xb = tl.load(X + (tok0 + offs_j)[:, None] * DX + offs_x[None, :], mask=mask_j[:, None] & mask_x[None, :],
                     other=0.0)
        acc = tl.dot(p.to(xb.dtype), xb, acc)

    denom = _denominator(tl.load(QN + tok0 + offs_r, mask=mask_r, other=0.0), m_r, eps, SIG, NORMALIZE)
    tl.store(OUT + (tok0 + offs_r)[:, None] * DX + offs_x[None, :], (acc / denom[:, None]).to(OUT.dtype.element_ty),
             mask=mask_r[:, None] & mask_x[None, :])


@triton.jit
def _output_grad_kernel(DH, H, QN, MROWS, DNUM, DQN, n_rows, DX, eps,
                        SIG: tl.constexpr, NORMALIZE: tl.constexpr, BT: tl.constexpr, BX: tl.constexpr):
    """Gradients of the numerator (dh / denominator) and of qn (zero where the lower clip is active)."""
    rows = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    mask = rows < n_rows
    qn = tl.load(QN + rows, mask=mask, other=0.0)
    if SIG:
        lower = tl.full((BT,), 1.0, dtype=tl.float32)
    else:
        lower = tl.exp(-tl.load(MROWS + rows, mask=mask, other=0.0))
    if SIG and not NORMALIZE:
        inv = tl.full((BT,), 1.0, dtype=tl.float32)
    else:
        inv = 1.0 / (tl.maximum(tl.abs(qn), lower) + eps)
    dot = tl.zeros((BT,), dtype=tl.float32)
    for x0 in range(0, DX, BX):
        offs_x = x0 + tl.arange(0, BX)
        m2 = mask[:, None] & (offs_x < DX)[None, :]
        ptrs = rows[:, None] * DX + offs_x[None, :]
        dh = tl.load(DH + ptrs, mask=m2, other=0.0).to(tl.float32)
        dot += tl.sum(dh * tl.load(H + ptrs, mask=m2, other=0.0).to(tl.float32), axis=1)
        tl.store(DNUM + ptrs, (dh * inv[:, None]).to(DNUM.dtype.element_ty), mask=m2)
    active = tl.abs(qn) > lower
    if SIG and not NORMALIZE:
        active = active & False
    dqn = tl.where(active, -dot * inv * tl.where(qn >= 0, 1.0, -1.0), 0.0)
    tl.store(DQN + rows, dqn, mask=mask)


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs use 3xTF32 products: plain tf32 loses too much in dq, a small difference of large terms (the
    normalised output is invariant to the scale of q)."""
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _conf(warps: int, stages: int, **tiles: int) -> triton.Config:
    return triton.Config(tiles, num_warps=warps, num_stages=stages)


def _scores_tiles() -> TileChoice:
    """The scores kernel's tiles (BR rows, BJ columns per step), pinned per case from an H100 sweep at DHQK=256,
    DHV=512, chunk 256, bf16 (benchmarks/results/mlstm_tiles.json): 'h' the forward, 'dp' the output-gradient scores
    (DHV wide); fp32 inputs take a small config (32 x 32)."""
    configs = [_conf(4, 3, BR=64, BJ=64), _conf(8, 2, BR=64, BJ=64), _conf(8, 2, BR=128, BJ=64),
               _conf(4, 3, BR=64, BJ=32), _conf(4, 2, BR=32, BJ=64), _conf(4, 2, BR=32, BJ=32),
               _conf(2, 2, BR=32, BJ=32)]
    return TileChoice(_scores_kernel, configs, pinned={"h": 4, "dp": 4, "fp32": 5},
                      small=_conf(4, 1, BR=32, BJ=32), key=["DA", "FWD", "AUG_ROWS", "SIG"])


def _intra_tiles() -> TileChoice:
    """The intra kernel's tiles (BR rows x BX columns, BJ columns of the chunk per step), pinned per mode like the
    scores kernel's; fp32 inputs take the last, small config, since the wide ones overflow shared memory."""
    configs = [_conf(4, 3, BR=64, BJ=64, BX=128), _conf(8, 3, BR=64, BJ=64, BX=256),
               _conf(8, 3, BR=128, BJ=64, BX=128), _conf(8, 2, BR=128, BJ=64, BX=256),
               _conf(4, 3, BR=64, BJ=32, BX=128), _conf(8, 3, BR=128, BJ=32, BX=128), _conf(4, 2, BR=64, BJ=32, BX=64)]
    return TileChoice(_intra_kernel, configs, pinned={"h": 0, "dq": 0, "dk": 0, "dv": 0, "fp32": 6},
                      small=_conf(4, 1, BR=32, BJ=32, BX=64), key=["DA", "DX", "REVERSE", "FWD", "AUG_MODE", "SIG"],
                      reset_to_zero=["RDOT"])


def _descriptor_blocks(args: dict) -> None:
    """pre_hook of the TMA forward kernel's configs: the descriptors' block shapes are its tiles."""
    BR, BJ, BX, BK = (args[name] for name in ("BR", "BJ", "BX", "BK"))
    args["A_DESC"].block_shape = [BR, BK]
    args["M_DESC"].block_shape = [1, BK, BX]
    args["P_DESC"].block_shape = [BR, BJ]
    args["X_DESC"].block_shape = [BJ, BX]


def _intra_fwd_tiles() -> TileChoice:
    """The TMA forward kernel's tiles (BR % BJ == 0), pinned from an H100 sweep at DHQK=256, DHV=512, chunk 256, bf16
    (benchmarks/results/mlstm_tma_forward_s15.json). Left out, since they gave other results than the rest on the
    H100 (Triton 3.6): (BR 128, BJ 64, BX 256) / 8 warps / 3 stages (sig h off by 0.5, exp right; the plain intra
    kernel's (64, 64, 256) / 8 warps did the like in session 6) and (128, 64, 64) / 4 warps / 4 stages (5e-3 off
    where its 3-stage twin is exact)."""
    conf = lambda warps, stages, **tiles: triton.Config(tiles, num_warps=warps, num_stages=stages,
                                                        pre_hook=_descriptor_blocks)
    configs = [conf(4, 3, BR=128, BJ=64, BX=128), conf(4, 3, BR=64, BJ=64, BX=128), conf(4, 2, BR=128, BJ=64, BX=128),
               conf(4, 3, BR=128, BJ=32, BX=128), conf(4, 3, BR=128, BJ=64, BX=64), conf(8, 3, BR=256, BJ=64, BX=128),
               conf(8, 3, BR=128, BJ=64, BX=128)]
    return TileChoice(_intra_fwd_kernel, configs, pinned={"h": 0}, small=conf(4, 1, BR=32, BJ=16, BX=32),
                      key=["DA", "DX", "SIG"])


SCORES_TILES = _scores_tiles()
INTRA_TILES = _intra_tiles()
INTRA_FWD_TILES = _intra_fwd_tiles()


def _scores(case: str, layout: ChunkLayout, chunk_size: int, *, A, BM, out, gb, gli, mrows, mstate, sigma_ab: float,
            sigma_x: float, sig: bool, stv=None, qn=None, gmax=None, aug=None, sigma_m: float = 1.0):
    """Launch the scores kernel: each chunk's weighted scores into out (n_chunks, NH, L, L). Case 'h' (the forward)
    also writes the row stabilisers (mrows, from the gates' gmax) and the normaliser sums (qn); 'dp' reads
    mrows."""
    _, NH, S, DA = A.shape
    half = A.element_size() == 2
    BD = _pow2(DA, high=32 if interpreter_enabled() else (256 if half else 64))
    dummy = gb

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BR"]), layout.n_chunks, NH)

    SCORES_TILES.launch(
        case if half else "fp32", grid,
        A, BM, out, aug if aug is not None else dummy, stv if stv is not None else dummy, gb, gli,
        gmax if gmax is not None else dummy, mrows,
        qn if qn is not None else dummy, mstate, layout.chunks, layout.n_chunks, NH, S, sigma_ab, sigma_x, sigma_m,
        L=chunk_size, DA=DA, FWD=case == "h", AUG_ROWS=aug is not None, SIG=sig, PRECISION=_precision(A.dtype), BD=BD,
    )


def _score_buffer(layout: ChunkLayout, NH: int, chunk_size: int, like: torch.Tensor) -> torch.Tensor:
    """An L x L score block per chunk and head, uninitialised: the scores kernel writes every entry s <= t, which is
    all the intra kernel reads."""
    return torch.empty(layout.n_chunks, NH, chunk_size, chunk_size, device=like.device, dtype=like.dtype)


def _state_slice(DA: int) -> int:
    """Columns of A (rows of the boundary state) per step of the intra kernels' boundary product."""
    return _pow2(DA, high=32 if interpreter_enabled() else 64)


def _intra(mode: str, layout: ChunkLayout, chunk_size: int, *, A, P, X, out, stm, stv, gb, gli, mrows, mstate,
           scale: float, sig: bool, normalize: bool = True, eps: float = 0.0, aug=None, rows_dot=None, qn=None):
    """Launch the intra-chunk kernel in one of its modes: 'h', 'dq', 'dk', 'dv'.

    mode: (A, P, X, boundary state M)      = h: (q, P, v, C)      dq: (dnum, dP, k, C^T)
                                            dk: (v, dP^T, q, dC^T)   dv: (k, P^T, dnum, dC)
    with P the forward's weighted scores and dP those of (dnum, v) (`_scores`). The partial row-dots (rows_dot) are
    reset to zero around autotuning, which writes the slots of other tilings.
    """
    _, NH, S, DA = A.shape
    DX = X.shape[-1]
    transposed = mode in ("dq", "dk")
    stride_ma, stride_mx = (1, DA) if transposed else (DX, 1)
    sigma_m = {"h": scale, "dq": scale, "dk": 1.0, "dv": 1.0}[mode]
    aug_mode = {"dq": _AUG_ROWS, "dk": _AUG_COLS}.get(mode, _AUG_NONE)
    rdot, r = (rows_dot if rows_dot is not None else (out, out))
    dummy = gb
    half = A.element_size() == 2
    BK = _state_slice(DA)

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BR"]) * triton.cdiv(DX, meta["BX"]), layout.n_chunks, NH)

    return INTRA_TILES.launch(
        mode if half else "fp32", grid,
        A, P, X, out, stm, stv, aug if aug is not None else dummy, r, rdot, gb, gli, mrows,
        qn if qn is not None else dummy, mstate, layout.chunks,
        layout.n_chunks, NH, S, stride_ma, stride_mx, gb.numel(), sigma_m, eps,
        L=chunk_size, DA=DA, DX=DX, REVERSE=mode in ("dk", "dv"), FWD=mode == "h", AUG_MODE=aug_mode,
        ROWDOT=rows_dot is not None, SIG=sig, NORMALIZE=normalize, PRECISION=_precision(A.dtype), BK=BK,
    )


def _takes_tma_forward(q: torch.Tensor, P: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether the forward's intra product runs as `_intra_fwd_kernel` (`tma_applies` to all its operands)."""
    return tma_applies(q, P, v, c)


def _intra_forward(layout: ChunkLayout, chunk_size: int, *, q, P, v, out, c, n, gb, gli, mrows, m, qn, scale: float,
                   sig: bool, normalize: bool, eps: float):
    """h = the boundary states' and the in-chunk products (`_intra` mode 'h'), on the TMA kernel where it applies."""
    if not _takes_tma_forward(q, P, v, c):
        _intra("h", layout, chunk_size, A=q, P=P, X=v, out=out, stm=c, stv=n, gb=gb, gli=gli, mrows=mrows, mstate=m,
               qn=qn, scale=scale, sig=sig, normalize=normalize, eps=eps)
        return
    _, NH, S, DA = q.shape
    DX = v.shape[-1]
    descs = (rows_descriptor(q), states_descriptor(c), rows_descriptor(P), rows_descriptor(v))

    def grid(meta):
        return (triton.cdiv(chunk_size, meta["BR"]) * triton.cdiv(DX, meta["BX"]), layout.n_chunks, NH)

    INTRA_FWD_TILES.launch("h", grid, *descs, v, out, gb, mrows, qn, m, layout.chunks, layout.n_chunks, NH, S, scale,
                           eps, L=chunk_size, DA=DA, DX=DX, SIG=sig, NORMALIZE=normalize,
                           BK=_state_slice(DA))


def _gate_buffers(igate: torch.Tensor, sig: bool):
    """gb (chunk-local cumulative log forget gates), gli (log input gates) and, for exp, gmax (fp32, like igate)."""
    gb = torch.empty(igate.shape, device=igate.device, dtype=torch.float32)
    gli = torch.empty_like(gb)
    return gb, gli, (gb if sig else torch.empty_like(gb))  # gmax is not written for sig


def _states(k, v, igate, fgate, layout, chunk_size, init, sig):
    """Gates (gb, gli, gmax), forward states at every slot in k's dtype (for the intra kernel and the backward), n and
    m in fp32, and the last states (C, n, m) in fp32."""
    NH, DK, DV = k.shape[1], k.shape[-1], v.shape[-1]
    gb, gli, gmax = _gate_buffers(igate, sig)
    gates = (igate, fgate, gmax)
    if not local_holds_chunk(chunk_size, k.dtype):
        _gate_kernel[(layout.n_chunks, NH)](igate, fgate, gb, gli, gmax, layout.chunks, layout.n_chunks, NH,
                                            k.shape[2], SIG=sig, BLOCK=_pow2(chunk_size))
        gates = None
    c, c_last, n = state_buffers(layout, NH, DK, DV, k.dtype, k.device)
    m = torch.empty(layout.n_slots, NH, device=k.device, dtype=torch.float32)
    chunk_states(layout, chunk_size, A=k, X=v, gb=gb, gli=gli, mstate=m, out_c=c, out_end=c_last, out_n=n, init=init,
                 a_mult=1.0, reverse=False, sig=sig, precision=_precision(k.dtype), gates=gates)
    last = (c_last, n[layout.last_slots], m[layout.last_slots])
    return (gb, gli, gmax), (c, n, m), last


def _segment_suffix_sum(x: torch.Tensor, layout: ChunkLayout) -> torch.Tensor:
    """Inclusive suffix sums of x (..., T) inside each sequence of the flattened token order, in fp64."""
    x = x.double()
    lengths = layout.seq_lengths
    if len(set(lengths)) == 1:  # equal lengths (every plain batch): per-row sums after a reshape, no gathers
        seg = x.reshape(*x.shape[:-1], len(lengths), lengths[0])
        prefix = seg.cumsum(-1)
        return (prefix[..., -1:] - prefix + seg).reshape(x.shape)
    prefix = x.cumsum(-1)  # suffix = (segment total) - (inclusive prefix) + x; torch.flip would cost more here
    padded = torch.cat([prefix.new_zeros(*prefix.shape[:-1], 1), prefix], dim=-1)
    return padded[..., layout.bounds[1:][layout.seq_id]] - prefix + x


def _last_m_grad(lf, li, m0, dm_last, layout: ChunkLayout):
    """Route the gradient of the last stabiliser m_T = max(m0 + sum lf, max_s (sum_{r>s} lf_r + li_s)) to its argmax.

    lf, li: (NH, T) fp64; dm_last: (n_seqs, NH). Returns (d lf, d li, d m0) contributions; ties split evenly, as in
    torch.amax.
    """
    NH, T = lf.shape
    bounds, seq_id, n_seqs = layout.bounds, layout.seq_id, layout.n_seqs
    suffix = _segment_suffix_sum(lf, layout)
    cand = suffix - lf + li  # weight of step s at the sequence's end
    seq_max = torch.full((NH, n_seqs), float("-inf"), dtype=cand.dtype, device=cand.device)
    seq_max = seq_max.scatter_reduce(1, seq_id.expand(NH, T), cand, reduce="amax")
    total = suffix[:, bounds[:-1]]  # (NH, n_seqs): sum of all lf
    init_cand = m0.t().double() + total if m0 is not None else torch.full_like(total, float("-inf"))
    init_wins = init_cand >= seq_max
    hits = (cand == seq_max[:, seq_id]) & ~init_wins[:, seq_id]
    count = torch.zeros_like(seq_max).scatter_add(1, seq_id.expand(NH, T), hits.double())
    dm = dm_last.t().double()
    d_li = torch.where(hits, (dm / count.clamp(min=1))[:, seq_id], 0.0)
    # dm reaches lf_r for every r after the argmax step (every r when the initial state wins): a prefix sum
    suffix_hits = _segment_suffix_sum(d_li, layout)
    d_lf = suffix_hits[:, bounds[:-1]][:, seq_id] - suffix_hits + torch.where(init_wins, dm, 0.0)[:, seq_id]
    d_m0 = torch.where(init_wins, dm, 0.0).t()
    return d_lf, d_li, d_m0


class _MLSTMChunkwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, igate, fgate, c0, n0, m0, variant, chunk_size, normalize, eps, bounds):
        sig = variant == "sig"
        B, _, S, _ = q.shape
        layout = chunk_layout(B, S, chunk_size, q.device, bounds)
        init = _fold_initial(c0, n0, m0, sig)
        (gb, gli, gmax), (c, n, m), last = _states(k, v, igate, fgate, layout, chunk_size, init, sig)
        h = torch.empty_like(v)
        mrows = torch.empty_like(gb)
        qn = torch.empty_like(gb)
        scale = q.shape[-1] ** -0.5
        scores = _score_buffer(layout, q.shape[1], chunk_size, q)
        _scores("h", layout, chunk_size, A=q, BM=k, out=scores, gb=gb, gli=gli, gmax=gmax, mrows=mrows, mstate=m,
                stv=n, qn=qn, sigma_ab=scale, sigma_x=1.0, sigma_m=scale, sig=sig)
        _intra_forward(layout, chunk_size, q=q, P=scores, v=v, out=h, c=c, n=n, gb=gb, gli=gli, mrows=mrows, m=m,
                       qn=qn, scale=scale, sig=sig, normalize=normalize, eps=eps)
        # the backward reuses the boundary states (c in the inputs' dtype) and the scores instead of recomputing them
        ctx.save_for_backward(q, k, v, igate, fgate, h, gb, gli, mrows, qn, c, n, m, scores, c0, n0, m0, *last)
        ctx.config = (variant, chunk_size, normalize, eps, layout)
        ctx.mark_non_differentiable(last[2])
        ctx.set_materialize_grads(False)  # unused last states give None, which skips their gradient terms
        return h, *last

    @staticmethod
    def backward(ctx, dh, dc_last, dn_last, dm_last):
        q, k, v, igate, fgate, h, gb, gli, mrows, qn, c, n, m, scores, c0, n0, m0, c_last, n_last, _ = ctx.saved_tensors
        variant, chunk_size, normalize, eps, layout = ctx.config
        sig = variant == "sig"
        B, NH, S, DK = q.shape
        DV = v.shape[-1]
        scale = DK**-0.5

        dh = torch.zeros_like(h) if dh is None else dh.contiguous()
        dnum = torch.empty_like(v)
        dqn = torch.empty_like(gb)
        rows = B * NH * S
        _output_grad_kernel[(triton.cdiv(rows, 64),)](dh, h, qn, mrows, dnum, dqn, rows, DV, eps, SIG=sig,
                                                      NORMALIZE=normalize, BT=64, BX=_pow2(DV, high=128))
        has_last_grad = dc_last is not None or dn_last is not None
        final = None
        if has_last_grad:
            dc_last = torch.zeros_like(c_last) if dc_last is None else dc_last.float().contiguous()
            dn_last = torch.zeros_like(n_last) if dn_last is None else dn_last.float().contiguous()
            final = (dc_last, dn_last, None)
        dc, dc_first, dn = state_buffers(layout, NH, DK, DV, q.dtype, q.device)
        chunk_states(layout, chunk_size, A=q, X=dnum, xaug=dqn, gb=gb, gli=gli, mrows=mrows, mstate=m, out_c=dc,
                     out_end=dc_first, out_n=dn, init=final, a_mult=scale, reverse=True, sig=sig,
                     precision=_precision(q.dtype))

        gates = dict(gb=gb, gli=gli, mrows=mrows, mstate=m, sig=sig)
        kw = dict(gates, scale=scale)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        # one partial row-dot per column tile of dq / dk; tiles the chosen config does not have stay zero
        qdq = torch.zeros(triton.cdiv(DK, 16), B, NH, S, device=q.device, dtype=torch.float32)
        kdk = torch.zeros_like(qdq)
        # the scores of (dnum, v) serve dq (rows t) and, transposed, dk (rows s); the forward's scores serve dv
        d_scores = _score_buffer(layout, NH, chunk_size, q)
        _scores("dp", layout, chunk_size, A=dnum, BM=v, out=d_scores, aug=dqn, sigma_ab=1.0, sigma_x=scale, **gates)
        _intra("dq", layout, chunk_size, A=dnum, P=d_scores, X=k, out=dq, stm=c, stv=n, aug=dqn, rows_dot=(qdq, q),
               **kw)
        _intra("dk", layout, chunk_size, A=v, P=d_scores, X=q, out=dk, stm=dc, stv=dn, aug=dqn, rows_dot=(kdk, k),
               **kw)
        del d_scores
        _intra("dv", layout, chunk_size, A=k, P=scores, X=dnum, out=dv, stm=dc, stv=dn, **kw)

        last_grads = (dc_last, dn_last, c_last, n_last, dm_last) if has_last_grad else None
        d_li, d_lf, d_m0 = _gate_grads(qdq.sum(0), kdk.sum(0), fgate, gli, layout, m0, sig, last_grads)
        di = d_li if not sig else d_li * torch.sigmoid(-igate.float())
        df = d_lf * torch.sigmoid(-fgate.float())

        dc0 = dn0 = dm0 = None
        if c0 is not None:
            first = layout.first_slots
            dc0, dn0 = dc_first, dn[first]
            c0f, n0f, _ = _fold_initial(c0, n0, m0, sig)
            dm0 = (dc0 * c0f).sum((-1, -2)) + (dn0 * n0f).sum(-1)
            if sig:
                factor = torch.exp(m0.float())
                dc0, dn0 = dc0 * factor[..., None, None], dn0 * factor[..., None]
            elif d_m0 is not None:
                dm0 = dm0 + d_m0
            dc0, dn0, dm0 = dc0.to(c0.dtype), dn0.to(n0.dtype), dm0.to(m0.dtype)
        return (dq, dk, dv, di.to(igate.dtype), df.to(fgate.dtype), dc0, dn0, dm0,
                None, None, None, None, None)


def _fold_initial(c0, n0, m0, sig: bool):
    """The initial state in fp32 as the kernels read it; for sig, exp(m) is folded into C and n."""
    if c0 is None:
        return None
    c, n, m = c0.float().contiguous(), n0.float().contiguous(), m0.float().contiguous()
    if sig:
        factor = torch.exp(m)
        c, n = c * factor[..., None, None], n * factor[..., None]
    return c, n, m


def _packed(x: torch.Tensor) -> torch.Tensor:
    """(B, NH, S) -> (NH, B * S), the flattened token order of ChunkLayout.bounds."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _gate_grads(x_q, x_k, fgate, gli, layout: ChunkLayout, m0, sig: bool, last_grads):
    """Gradients of the log gates from the row-dots q.dq and k.dk, plus the last state's terms.

    Returns d log i, d log f (B, NH, S) in fp32 and the extra gradient of the initial m (or None).
    """
    B, NH, S = x_q.shape
    seq_id = layout.seq_id
    d_lf = _segment_suffix_sum(_packed(x_q - x_k), layout)
    d_li = _packed(x_k).double()
    d_m0 = None
    if last_grads is not None:
        dc_last, dn_last, c_last, n_last, dm_last = last_grads
        scaling = (dc_last * c_last).sum((-1, -2)) + (dn_last * n_last).sum(-1)  # (n_seqs, NH)
        d_lf = d_lf + scaling.t().double()[:, seq_id]
        if not sig:
            # a loss on the stabilised last state also moves its stabiliser m_T
            dm = (torch.zeros_like(scaling) if dm_last is None else dm_last.float()) - scaling
            lf = _packed(F.logsigmoid(fgate.double()))
            extra_lf, extra_li, d_m0 = _last_m_grad(lf, _packed(gli).double(), m0, dm, layout)
            d_lf, d_li = d_lf + extra_lf, d_li + extra_li
            d_m0 = d_m0.float() if m0 is not None else None
    unpack = lambda x: x.float().reshape(NH, B, S).transpose(0, 1)
    return unpack(d_li), unpack(d_lf), d_m0


@torch.compiler.disable
def mlstm_chunkwise_triton(q, k, v, igate, fgate, *, variant: str, chunk_size: int,
                           initial_state: MLSTMState | None, return_last_state: bool, normalize: bool, eps: float,
                           cu_seqlens: torch.Tensor | None):
    """Chunkwise mLSTM on Triton; returns (h, last_state or None). Differentiable w.r.t. all inputs and the initial
    state (the last state's m is not differentiable). Shapes as in `kernels.mlstm.mlstm`; fp16/bf16/fp32 inputs.

    Runs eagerly inside torch.compile graphs (the Triton launches sit behind a graph break).
    """
    if q.dtype == torch.float64:
        raise ValueError("the Triton mLSTM kernels take fp16/bf16/fp32 inputs; use backend='torch' for fp64")
    bounds = None if cu_seqlens is None else tuple(int(b) for b in cu_seqlens.tolist())
    q, k, v, igate, fgate = (x.contiguous() for x in (q, k, v, igate, fgate))
    c0, n0, m0 = (None, None, None) if initial_state is None else initial_state
    h, c, n, m = _MLSTMChunkwise.apply(q, k, v, igate, fgate, c0, n0, m0, variant, chunk_size, normalize, eps,
                                       bounds)
    return h, ((c, n, m) if return_last_state else None)
