"""Persistent Triton kernels for the sLSTM (and classic LSTM) recurrence: one launch per sequence and pass.

Forward: `split` programs share one head and a tile of batch rows and loop over all time steps inside the kernel;
each owns a slice of the head's gate outputs (all four gates) and so a DH x 4*DH/split slice of the recurrent
weights, which it hoists on chip before the time loop or re-reads every step (from L1 only for an unsplit head
whose weights fit there: the barrier of a split head invalidates L1 every step).
Per step a program multiplies the previous hidden state of its head with its slice, adds the input pre-activations
and the bias and applies the stabilised gating, all fused. Recurrent states live in fp32 buffers. With split = 1 a
CTA barrier per step orders the writes of h_t before the reads of the next step; with split > 1 the programs of a
head exchange h_t through global memory and a grid-level barrier per step (`_arrive` / `_wait_for` on a per-head
counter), which needs all programs co-resident: the tiling solver keeps the grid within the multiprocessors, and
under TRITON_INTERPRET (programs run one after another) it only offers split = 1.

Backward: the mirror image, a reverse time loop: each program runs the cell's backward on its slice, giving the gate
pre-activation gradients dG_t (which are dx), then, after the head's barrier, dh_{t-1} = dG_t R^T for its slice of
dh (the same columns, so the next step's cell backward only needs its own results). dR and the bias gradient are
sums over all (b, t) of h_{t-1}^T dG_t and dG_t; since dG must be materialised anyway (it is dx), one batched matmul
after the loop computes them instead of an on-chip accumulator per program (4 x DH x DH/split fp32 per program,
96 KB at the benchmark's split of 6 on top of the weight slice; the matmul takes ~1.1 ms there, ~10% of a step).

Tilings come from `kernels.slstm.tiling` (constraint solver + cost model); among its top candidates the fastest is
measured once per shape on the GPU and cached.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpreter_enabled
from kernels.slstm import tiling as _tiling

_OPERAND_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
_AUTOTUNE_TOP_K = 3
_AUTOTUNE_STEPS = 64
_AUTOTUNE_REPEATS = 5
_best_tiling: dict[tuple, _tiling.Tiling] = {}


def _operand_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the matmul operands (weights, h_{t-1}, dG): 16-bit inputs stay 16-bit, everything else fp32."""
    return dtype if dtype in (torch.bfloat16, torch.float16) else torch.float32


# ----------------------------------------------------------------------------------------------------- cell math
@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _cell_forward(pi, pf, pz, po, c_prev, n_prev, m_prev, LSTM: tl.constexpr):
    """One step of gate math on pre-activations; returns (c, n, m, h)."""
    if LSTM:
        c = _sigmoid(pf) * c_prev + _sigmoid(pi) * _tanh(pz)
        n = tl.full(c.shape, 1.0, tl.float32)
        m = tl.zeros(c.shape, tl.float32)
        h = _sigmoid(po) * _tanh(c)
    else:
        a = _logsigmoid(pf) + m_prev
        m = tl.maximum(a, pi)
        forget = tl.exp(a - m)
        write = tl.exp(pi - m)
        c = forget * c_prev + write * _tanh(pz)
        n = forget * n_prev + write
        h = _sigmoid(po) * c / n
    return c, n, m, h


@triton.jit
def _cell_backward(pi, pf, pz, po, c_prev, n_prev, m_prev, c, n, m, dh, dc, dn, dm, LSTM: tl.constexpr):
    """Gradients of one step: (d pre_i, d pre_f, d pre_z, d pre_o, dc_prev, dn_prev, dm_prev).

    Mirrors autograd through the reference cell, including torch.maximum's even split of the gradient on ties.
    """
    og = _sigmoid(po)
    zt = _tanh(pz)
    if LSTM:
        ig = _sigmoid(pi)
        fg = _sigmoid(pf)
        tc = _tanh(c)
        d_o = dh * tc * og * (1.0 - og)
        dc_tot = dc + dh * og * (1.0 - tc * tc)
        d_f = dc_tot * c_prev * fg * (1.0 - fg)
        d_i = dc_tot * zt * ig * (1.0 - ig)
        d_z = dc_tot * ig * (1.0 - zt * zt)
        dc_prev = dc_tot * fg
        dn_prev = tl.zeros(c.shape, tl.float32)
        dm_prev = tl.zeros(c.shape, tl.float32)
    else:
        a = _logsigmoid(pf) + m_prev
        forget = tl.exp(a - m)
        write = tl.exp(pi - m)
        d_o = dh * c / n * og * (1.0 - og)
        dc_tot = dc + dh * og / n
        dn_tot = dn - dh * og * c / (n * n)
        g_forget = (dc_tot * c_prev + dn_tot * n_prev) * forget
        g_write = (dc_tot * zt + dn_tot) * write
        d_z = dc_tot * write * (1.0 - zt * zt)
        dm_tot = dm - g_forget - g_write
        share_a = tl.where(a > pi, 1.0, tl.where(a == pi, 0.5, 0.0))
        d_a = g_forget + dm_tot * share_a
        d_i = g_write + dm_tot * (1.0 - share_a)
        d_f = d_a * _sigmoid(-pf)
        dc_prev = dc_tot * forget
        dn_prev = dn_tot * forget
        dm_prev = d_a
    return d_i, d_f, d_z, d_o, dc_prev, dn_prev, dm_prev


# ------------------------------------------------------------------------------------------------------ helpers
@triton.jit
def _weight_tile(w_ptr, gate, head, offs_k, offs_n, DH: tl.constexpr, H: tl.constexpr):
    """Tile (k, n) of the (DH, DH) matrix of one gate and head in a (4, NH, DH, DH) tensor, zero outside."""
    ptrs = w_ptr + gate * H * DH + head * DH * DH + offs_k[:, None] * DH + offs_n[None, :]
    return tl.load(ptrs, mask=(offs_k[:, None] < DH) & (offs_n[None, :] < DH), other=0.0)


@triton.jit
def _tile(row_ptrs, offs, mask):
    """Tile of a buffer given a (rows, 1) block of row pointers and column offsets, as fp32, zero outside mask."""
    return tl.load(row_ptrs + offs[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _program_tile(flags_ptr, B, DH: tl.constexpr, H: tl.constexpr, BB: tl.constexpr, BE: tl.constexpr,
                  SPLIT: tl.constexpr):
    """This program's head, first gate-output column (split programs), arrival counter, batch rows (int64) and
    their mask, the head's first column, and the rows' offsets in a (B, H) state slot."""
    head = tl.program_id(0) // SPLIT
    e_lo = (tl.program_id(0) % SPLIT) * BE
    flag = flags_ptr + head * tl.num_programs(1) + tl.program_id(1)
    rows = tl.program_id(1) * BB + tl.arange(0, BB)
    row_ok = rows < B
    rows = rows.to(tl.int64)
    return head, e_lo, flag, rows, row_ok, head * DH, rows[:, None] * H


@triton.jit
def _arrive(flag_ptr):
    """Tell the other programs of this head that this program's writes of the step are done (release)."""
    tl.debug_barrier()  # every thread's stores are issued before the single-thread release below
    tl.atomic_add(flag_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _wait_for(flag_ptr, target):
    """Spin until the head's counter reaches `target` arrivals (acquire: the writes released before them, h_t or
    dG_t of the other programs, are visible afterwards; on NVIDIA it also invalidates this SM's L1, which is why a
    split program's weights are best hoisted on chip, into registers or shared memory, rather than left to L1)."""
    seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope="gpu")


# ------------------------------------------------------------------------------------------------------ forward
@triton.jit
def _forward_kernel(x_ptr, w_ptr, bias_ptr, state_ptr, hseq_ptr, gates_ptr, flags_ptr, B, T, slot_stride,
                    DH: tl.constexpr, H: tl.constexpr, BB: tl.constexpr, BE: tl.constexpr, BK: tl.constexpr,
                    SPLIT: tl.constexpr, STAGES: tl.constexpr, HOIST: tl.constexpr, SAVE: tl.constexpr,
                    LSTM: tl.constexpr, OPERAND: tl.constexpr, PRECISION: tl.constexpr):
    """Grid (heads * SPLIT, batch tiles); program (head, part) owns gate-output columns [part*BE, part*BE + BE)
    when SPLIT > 1, the whole head otherwise. state: (NS, 4, B, H) fp32 slots of (c, n, m, h); slot 0 holds the
    initial state. With SAVE, NS = T + 1 and the pre-activations go to gates (B, T, 4H) fp32 for the backward;
    otherwise NS = 2 (ping-pong). hseq: (B, T + 1, H) in the operand dtype, [:, 0] = initial h; h_t goes to
    [:, t + 1] and is read back as the next step's matmul operand (16-bit tiles that the pipeliner can prefetch).
    flags: one int32 arrival counter per (head, batch tile), zero at launch (SPLIT > 1)."""
    head, e_lo, flag, rows, row_ok, col0, s_rows = _program_tile(flags_ptr, B, DH, H, BB, BE, SPLIT)
    E_SPAN: tl.constexpr = BE if SPLIT > 1 else DH
    x_rows = x_ptr + rows[:, None] * (T * 4 * H)
    h_rows = hseq_ptr + rows[:, None] * ((T + 1) * H) + col0
    g_rows = gates_ptr + rows[:, None] * (T * 4 * H)
    if HOIST:  # one (whole head) x (this program's gate outputs) tile per gate, on chip for the whole loop
        offs_wk = tl.arange(0, BK)
        offs_we = e_lo + tl.arange(0, BE)
        w_i = _weight_tile(w_ptr, 0, head, offs_wk, offs_we, DH, H)
        w_f = _weight_tile(w_ptr, 1, head, offs_wk, offs_we, DH, H)
        w_z = _weight_tile(w_ptr, 2, head, offs_wk, offs_we, DH, H)
        w_o = _weight_tile(w_ptr, 3, head, offs_wk, offs_we, DH, H)
    prev = state_ptr
    nxt = state_ptr + slot_stride
    for t in tl.range(0, T, num_stages=1):
        for e0 in tl.range(e_lo, e_lo + E_SPAN, BE, num_stages=1):
            offs_e = e0 + tl.arange(0, BE)
            cols = col0 + offs_e
            mask = row_ok[:, None] & (offs_e[None, :] < DH)
            b_ok = offs_e < DH
            # Loads that do not depend on h_{t-1} are issued first, so their latency hides behind the matmul.
            x_t = x_rows + t * 4 * H
            pi = _tile(x_t, cols, mask) + tl.load(bias_ptr + cols, mask=b_ok)[None, :]
            pf = _tile(x_t + H, cols, mask) + tl.load(bias_ptr + H + cols, mask=b_ok)[None, :]
            pz = _tile(x_t + 2 * H, cols, mask) + tl.load(bias_ptr + 2 * H + cols, mask=b_ok)[None, :]
            po = _tile(x_t + 3 * H, cols, mask) + tl.load(bias_ptr + 3 * H + cols, mask=b_ok)[None, :]
            c_prev = _tile(prev + s_rows, cols, mask)
            n_prev = _tile(prev + B * H + s_rows, cols, mask)
            m_prev = _tile(prev + 2 * B * H + s_rows, cols, mask)
            if SPLIT > 1:
                _wait_for(flag, SPLIT * t)  # all slices of h_{t-1} are written
            for k0 in tl.range(0, DH, BK, num_stages=STAGES):
                offs_k = k0 + tl.arange(0, BK)
                h_prev = tl.load(h_rows + t * H + offs_k[None, :], mask=row_ok[:, None] & (offs_k[None, :] < DH),
                                 other=0.0)
                if not HOIST:
                    w_i = _weight_tile(w_ptr, 0, head, offs_k, offs_e, DH, H)
                    w_f = _weight_tile(w_ptr, 1, head, offs_k, offs_e, DH, H)
                    w_z = _weight_tile(w_ptr, 2, head, offs_k, offs_e, DH, H)
                    w_o = _weight_tile(w_ptr, 3, head, offs_k, offs_e, DH, H)
                pi = tl.dot(h_prev, w_i, pi, input_precision=PRECISION)
                pf = tl.dot(h_prev, w_f, pf, input_precision=PRECISION)
                pz = tl.dot(h_prev, w_z, pz, input_precision=PRECISION)
                po = tl.dot(h_prev, w_o, po, input_precision=PRECISION)
            c, n, m, h = _cell_forward(pi, pf, pz, po, c_prev, n_prev, m_prev, LSTM)
            st = nxt + s_rows + cols[None, :]
            tl.store(st, c, mask=mask)
            tl.store(st + B * H, n, mask=mask)
            tl.store(st + 2 * B * H, m, mask=mask)
            tl.store(st + 3 * B * H, h, mask=mask)
            tl.store(h_rows + (t + 1) * H + offs_e[None, :], h.to(OPERAND), mask=mask)
            if SAVE:
                g_t = g_rows + t * 4 * H + cols[None, :]
                tl.store(g_t, pi, mask=mask)
                tl.store(g_t + H, pf, mask=mask)
                tl.store(g_t + 2 * H, pz, mask=mask)
                tl.store(g_t + 3 * H, po, mask=mask)
        if SPLIT > 1:
            _arrive(flag)
        else:
            tl.debug_barrier()  # h_t (all tiles) is written before any thread reads it as h_prev
        if SAVE:
            prev = nxt
            nxt = nxt + slot_stride
        else:
            prev, nxt = nxt, prev


# ----------------------------------------------------------------------------------------------------- backward
@triton.jit
def _backward_kernel(gates_ptr, state_ptr, wt_ptr, dy_ptr, dgates_ptr, dx_ptr, dh_ptr, carry_ptr, flags_ptr, B, T,
                     slot_stride, DH: tl.constexpr, H: tl.constexpr, BB: tl.constexpr, BE: tl.constexpr,
                     BK: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr, STAGES: tl.constexpr,
                     HOIST: tl.constexpr, LSTM: tl.constexpr, SEPARATE_DX: tl.constexpr, OPERAND: tl.constexpr,
                     PRECISION: tl.constexpr):
    """Reverse time loop, grid as in the forward. gates: saved pre-activations (B, T, 4H); state: (T + 1, 4, B, H)
    slots; wt: recurrent weights transposed per gate and head; dgates (B, T, 4H) fp32 receives the pre-activation
    gradients and, with SEPARATE_DX, dx (same layout, operand dtype) a rounded copy that the recurrent matmul
    streams. dh (B, H) enters as d h_last and leaves as d h_0; carry (2, 3, B, H) ping-pongs (dc, dn, dm), slot 0
    entering as the final states' gradients. BE tiles the elementwise phase; the recurrent product writes BN columns
    of dh (the program's slice, or the head rounded up to a power of two), reducing over gate outputs in BK tiles."""
    head, e_lo, flag, rows, row_ok, col0, s_rows = _program_tile(flags_ptr, B, DH, H, BB, BE, SPLIT)
    E_SPAN: tl.constexpr = BE if SPLIT > 1 else DH
    g_rows = gates_ptr + rows[:, None] * (T * 4 * H)
    dg_rows = dgates_ptr + rows[:, None] * (T * 4 * H)
    dx_rows = dx_ptr + rows[:, None] * (T * 4 * H)
    dy_rows = dy_ptr + rows[:, None] * (T * H)
    offs_d = e_lo + tl.arange(0, BN)
    if HOIST:
        offs_wk = tl.arange(0, BK)
        w_i = _weight_tile(wt_ptr, 0, head, offs_wk, offs_d, DH, H)
        w_f = _weight_tile(wt_ptr, 1, head, offs_wk, offs_d, DH, H)
        w_z = _weight_tile(wt_ptr, 2, head, offs_wk, offs_d, DH, H)
        w_o = _weight_tile(wt_ptr, 3, head, offs_wk, offs_d, DH, H)
    carry_in = carry_ptr
    carry_out = carry_ptr + 3 * B * H
    for step in tl.range(0, T, num_stages=1):
        t = T - 1 - step
        cur = state_ptr + (t + 1).to(tl.int64) * slot_stride
        prev = cur - slot_stride
        for e0 in tl.range(e_lo, e_lo + E_SPAN, BE, num_stages=1):
            offs_e = e0 + tl.arange(0, BE)
            mask = row_ok[:, None] & (offs_e[None, :] < DH)
            cols = col0 + offs_e
            g_t = g_rows + t * 4 * H
            pi = _tile(g_t, cols, mask)
            pf = _tile(g_t + H, cols, mask)
            pz = _tile(g_t + 2 * H, cols, mask)
            po = _tile(g_t + 3 * H, cols, mask)
            dh = _tile(dy_rows + t * H, cols, mask) + _tile(dh_ptr + s_rows, cols, mask)
            dc = _tile(carry_in + s_rows, cols, mask)
            dn = _tile(carry_in + B * H + s_rows, cols, mask)
            dm = _tile(carry_in + 2 * B * H + s_rows, cols, mask)
            prev_rows = prev + s_rows
            cur_rows = cur + s_rows
            d_i, d_f, d_z, d_o, dc_prev, dn_prev, dm_prev = _cell_backward(
                pi, pf, pz, po,
                _tile(prev_rows, cols, mask), _tile(prev_rows + B * H, cols, mask),
                _tile(prev_rows + 2 * B * H, cols, mask),
                _tile(cur_rows, cols, mask), _tile(cur_rows + B * H, cols, mask),
                _tile(cur_rows + 2 * B * H, cols, mask),
                dh, dc, dn, dm, LSTM)
            dg_t = dg_rows + t * 4 * H + cols[None, :]
            tl.store(dg_t, d_i, mask=mask)
            tl.store(dg_t + H, d_f, mask=mask)
            tl.store(dg_t + 2 * H, d_z, mask=mask)
            tl.store(dg_t + 3 * H, d_o, mask=mask)
            if SEPARATE_DX:
                dx_t = dx_rows + t * 4 * H + cols[None, :]
                tl.store(dx_t, d_i.to(OPERAND), mask=mask)
                tl.store(dx_t + H, d_f.to(OPERAND), mask=mask)
                tl.store(dx_t + 2 * H, d_z.to(OPERAND), mask=mask)
                tl.store(dx_t + 3 * H, d_o.to(OPERAND), mask=mask)
            co = carry_out + s_rows + cols[None, :]
            tl.store(co, dc_prev, mask=mask)
            tl.store(co + B * H, dn_prev, mask=mask)
            tl.store(co + 2 * B * H, dm_prev, mask=mask)
        # dG_t complete (all programs of the head) before the recurrent product reads it; dh read before overwritten
        if SPLIT > 1:
            _arrive(flag)
            _wait_for(flag, SPLIT * (step + 1))
        else:
            tl.debug_barrier()
        # dh_{t-1} = sum_g dG_g R_g^T for this program's columns: one weight stream per step, pipelined over k.
        acc = tl.zeros((BB, BN), tl.float32)
        for k0 in tl.range(0, DH, BK, num_stages=STAGES):
            offs_k = k0 + tl.arange(0, BK)
            kmask = row_ok[:, None] & (offs_k[None, :] < DH)
            dg_k = dx_rows + t * 4 * H + col0 + offs_k[None, :]
            if not HOIST:
                w_i = _weight_tile(wt_ptr, 0, head, offs_k, offs_d, DH, H)
                w_f = _weight_tile(wt_ptr, 1, head, offs_k, offs_d, DH, H)
                w_z = _weight_tile(wt_ptr, 2, head, offs_k, offs_d, DH, H)
                w_o = _weight_tile(wt_ptr, 3, head, offs_k, offs_d, DH, H)
            acc = tl.dot(tl.load(dg_k, mask=kmask, other=0.0), w_i, acc, input_precision=PRECISION)
            acc = tl.dot(tl.load(dg_k + H, mask=kmask, other=0.0), w_f, acc, input_precision=PRECISION)
            acc = tl.dot(tl.load(dg_k + 2 * H, mask=kmask, other=0.0), w_z, acc, input_precision=PRECISION)
            acc = tl.dot(tl.load(dg_k + 3 * H, mask=kmask, other=0.0), w_o, acc, input_precision=PRECISION)
        tl.store(dh_ptr + s_rows + col0 + offs_d[None, :], acc, mask=row_ok[:, None] & (offs_d[None, :] < DH))
        tl.debug_barrier()  # dh_{t-1} and the carries complete before the next (earlier) step reads them
        carry_in, carry_out = carry_out, carry_in


# ------------------------------------------------------------------------------------------------ host wrappers
def _grid_and_flags(t: _tiling.Tiling, batch: int, num_heads: int, device):
    """Launch grid (heads * split, batch tiles) and the zeroed per-(head, batch tile) arrival counters."""
    grid = (num_heads * t.split, triton.cdiv(batch, t.block_b))
    return grid, torch.zeros(num_heads * grid[1], device=device, dtype=torch.int32)


def _launch_forward(t: _tiling.Tiling, x, w, bias, state, hseq, gates, num_heads: int, save: bool, lstm: bool):
    B, T, four_h = x.shape
    hidden = four_h // 4
    grid, flags = _grid_and_flags(t, B, num_heads, x.device)
    _forward_kernel[grid](
        x, w, bias, state, hseq, gates, flags, B, T, state.stride(0),
        DH=hidden // num_heads, H=hidden, BB=t.block_b, BE=t.block_e, BK=t.block_k, SPLIT=t.split,
        STAGES=t.num_stages, HOIST=t.hoist_r, SAVE=save, LSTM=lstm, OPERAND=_OPERAND_DTYPES[w.dtype],
        PRECISION="ieee" if w.dtype == torch.float32 else "tf32", num_warps=t.num_warps, num_stages=1)


def _launch_backward(t: _tiling.Tiling, gates, state, wt, dy, dgates, dx, dh, carry, num_heads: int, lstm: bool):
    B, T, four_h = gates.shape
    hidden = four_h // 4
    grid, flags = _grid_and_flags(t, B, num_heads, gates.device)
    _backward_kernel[grid](
        gates, state, wt, dy, dgates, dx, dh, carry, flags, B, T, state.stride(0),
        DH=hidden // num_heads, H=hidden, BB=t.block_b, BE=t.block_e, BK=t.block_k,
        BN=t.block_e if t.split > 1 else _tiling.head_tile(hidden // num_heads), SPLIT=t.split,
        STAGES=t.num_stages, HOIST=t.hoist_r, LSTM=lstm, SEPARATE_DX=dx.data_ptr() != dgates.data_ptr(),
        OPERAND=_OPERAND_DTYPES[wt.dtype], PRECISION="ieee" if wt.dtype == torch.float32 else "tf32",
        num_warps=t.num_warps, num_stages=1)


def _problem(pass_: str, batch: int, hidden: int, num_heads: int, operand: torch.dtype) -> _tiling.Problem:
    return _tiling.Problem(hidden // num_heads, batch, num_heads, 2 if operand != torch.float32 else 4, pass_)


def _tilings(pass_: str, batch: int, hidden: int, num_heads: int, operand: torch.dtype, device: torch.device):
    """The solver's top candidates for a pass (ValueError when the shape is infeasible on this device)."""
    return _tiling.solve(_problem(pass_, batch, hidden, num_heads, operand), _tiling.device_limits(device),
                         top_k=_AUTOTUNE_TOP_K)


def _elapsed_ms(probe, cand) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    probe(cand)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def _fastest(key: tuple, candidates, probe) -> _tiling.Tiling:
    """Time `probe(tiling)` for each candidate once per key, best of a few runs (small shapes run for only a few
    hundred microseconds, where one slow launch would decide); CUDA only, the interpreter takes the top-ranked."""
    if len(candidates) == 1 or interpreter_enabled() or not torch.cuda.is_available():
        return candidates[0]
    if key not in _best_tiling:
        times = []
        for cand in candidates:
            try:
                probe(cand)  # compile and warm up
            except triton.runtime.errors.OutOfResources:  # the model's resource estimate was too optimistic
                times.append(float("inf"))
                continue
            times.append(min(_elapsed_ms(probe, cand) for _ in range(_AUTOTUNE_REPEATS)))
        if min(times) == float("inf"):
            raise ValueError(f"none of the solver's tilings {candidates} compiles on this GPU; use backend='torch'")
        _best_tiling[key] = candidates[min(range(len(candidates)), key=times.__getitem__)]
    return _best_tiling[key]


def _forward_tiling(x, w, bias, state, num_heads: int, lstm: bool, save: bool) -> _tiling.Tiling:
    B, T, four_h = x.shape
    cands = _tilings("forward", B, four_h // 4, num_heads, w.dtype, x.device)
    steps = min(T, _AUTOTUNE_STEPS)

    def probe(t):
        xp = x[:, :steps].contiguous()
        sp = state[: steps + 1].clone() if save else state.clone()
        hseq = xp.new_zeros(B, steps + 1, four_h // 4)
        gates = torch.empty(B, steps, four_h, device=x.device) if save else sp
        _launch_forward(t, xp, w, bias, sp, hseq, gates, num_heads, save, lstm)

    key = ("forward", B, four_h, num_heads, x.dtype, w.dtype, lstm, save, x.device)
    return _fastest(key, cands, probe)


def _backward_tiling(gates, state, wt, dy, num_heads: int, lstm: bool) -> _tiling.Tiling:
    B, T, four_h = gates.shape
    cands = _tilings("backward", B, four_h // 4, num_heads, wt.dtype, gates.device)
    steps = min(T, _AUTOTUNE_STEPS)

    def probe(t):
        gp = gates[:, :steps].contiguous()
        dgates = torch.empty_like(gp)
        dx = dgates if wt.dtype == torch.float32 else torch.empty_like(gp, dtype=wt.dtype)
        dh = torch.zeros(B, four_h // 4, device=gates.device)
        carry = torch.zeros(2, 3, B, four_h // 4, device=gates.device)
        _launch_backward(t, gp, state[: steps + 1], wt, dy[:, :steps].contiguous(), dgates, dx, dh, carry,
                         num_heads, lstm)

    key = ("backward", B, four_h, num_heads, dy.dtype, wt.dtype, lstm, gates.device)
    return _fastest(key, cands, probe)


class _SLSTMFunction(torch.autograd.Function):
    """Autograd wrapper: states in fp32, pre-activations and per-step states saved for the backward."""

    @staticmethod
    def forward(ctx, x, recurrent_weight, bias, c0, n0, m0, h0, num_heads, lstm, tiling):
        B, T, four_h = x.shape
        hidden = four_h // 4
        x = x.contiguous()
        w = recurrent_weight.to(_operand_dtype(x.dtype)).contiguous()
        bias32 = bias.to(torch.float32).contiguous()
        save = any(ctx.needs_input_grad[:7])
        state = torch.empty(T + 1 if save else 2, 4, B, hidden, device=x.device, dtype=torch.float32)
        state[0] = torch.stack([c0, n0, m0, h0]).to(torch.float32)
        hseq = x.new_empty(B, T + 1, hidden)
        hseq[:, 0] = h0
        gates = torch.empty(B, T, four_h, device=x.device, dtype=torch.float32) if save else state
        t = tiling[0] if tiling else _forward_tiling(x, w, bias32, state, num_heads, lstm, save)
        _launch_forward(t, x, w, bias32, state, hseq, gates, num_heads, save, lstm)
        final = state[T % state.shape[0]]
        if save:
            ctx.save_for_backward(gates, state, w)
            ctx.config = (num_heads, lstm, tiling, x.dtype, recurrent_weight.dtype, bias.dtype,
                          tuple(s.dtype for s in (c0, n0, m0, h0)))
        return hseq[:, 1:].contiguous(), final[0].clone(), final[1].clone(), final[2].clone(), final[3].clone()

    @staticmethod
    def backward(ctx, d_out, d_c, d_n, d_m, d_h):
        gates, state, w = ctx.saved_tensors
        num_heads, lstm, tiling, x_dtype, w_dtype, b_dtype, state_dtypes = ctx.config
        B, T, four_h = gates.shape
        hidden = four_h // 4
        dh = hidden // num_heads
        wt = w.transpose(-1, -2).contiguous()
        dy = d_out.contiguous()
        dgates = torch.empty_like(gates)
        dx = dgates if w.dtype == torch.float32 else torch.empty_like(gates, dtype=w.dtype)
        d_hidden = d_h.to(torch.float32).contiguous().clone()
        carry = torch.zeros(2, 3, B, hidden, device=gates.device, dtype=torch.float32)
        carry[0] = torch.stack([d_c, d_n, d_m]).to(torch.float32)
        if tiling is None:
            t = _backward_tiling(gates, state, wt, dy, num_heads, lstm)
        else:
            t = tiling[1]
            _tiling.validate(_problem("backward", B, hidden, num_heads, w.dtype), _tiling.device_limits(w.device), t)
        _launch_backward(t, gates, state, wt, dy, dgates, dx, d_hidden, carry, num_heads, lstm)
        d_init = carry[T % 2]
        h_prev = state[:T, 3].view(T, B, num_heads, dh)
        d_w = torch.einsum("tbhd,btghe->ghde", h_prev, dgates.view(B, T, 4, num_heads, dh))
        grads_init = (g.to(dt) for g, dt in zip((d_init[0], d_init[1], d_init[2], d_hidden), state_dtypes))
        return (dx.to(x_dtype), d_w.to(w_dtype), dgates.sum((0, 1)).to(b_dtype), *grads_init, None, None, None)


def slstm_triton(x: torch.Tensor, recurrent_weight: torch.Tensor, bias: torch.Tensor, num_heads: int, *,
                 initial_state=None, return_last_state: bool = False, cell: str = "slstm",
                 tiling: _tiling.Tiling | tuple[_tiling.Tiling, _tiling.Tiling] | None = None):
    """sLSTM / LSTM over a sequence with the persistent Triton kernels; same contract as `kernels.slstm.slstm`.

    x: (B, T, 4*NH*DH) in bf16/fp16/fp32; recurrent_weight: (4, NH, DH, DH); bias: (4*NH*DH,). Returns h in x's
    dtype, or (h, (c, n, m, h_last)) with fp32 states. Differentiable w.r.t. x, weights, bias and initial state.
    `tiling` forces a launch configuration, one for both passes or a (forward, backward) pair (tests, tiling
    studies); by default the solver's candidates are autotuned. Raises ValueError before any launch when no tiling
    is feasible for the shape (a forced backward tiling is checked when the backward runs, before its launch).
    """
    if x.dtype not in _OPERAND_DTYPES:
        raise ValueError(f"the Triton sLSTM supports bf16, fp16 and fp32 inputs, got {x.dtype}; use backend='torch'")
    if cell not in ("slstm", "lstm"):
        raise ValueError(f"cell must be 'slstm' or 'lstm', got {cell!r}")
    B, hidden = x.shape[0], x.shape[-1] // 4
    operand = _operand_dtype(x.dtype)
    if tiling is None:
        for pass_ in _tiling.PASSES:
            _tilings(pass_, B, hidden, num_heads, operand, x.device)
    else:
        tiling = (tiling, tiling) if isinstance(tiling, _tiling.Tiling) else tuple(tiling)
        _tiling.validate(_problem("forward", B, hidden, num_heads, operand), _tiling.device_limits(x.device),
                         tiling[0])
    if initial_state is None:
        zeros = torch.zeros(B, hidden, device=x.device, dtype=torch.float32)
        m0 = zeros if cell == "lstm" else torch.full_like(zeros, float("-inf"))
        initial_state = (zeros, zeros, m0, zeros)
    h, c, n, m, h_last = _SLSTMFunction.apply(x, recurrent_weight, bias, *initial_state, num_heads, cell == "lstm",
                                              tiling)
    return (h, (c, n, m, h_last)) if return_last_state else h


def tuned_tilings() -> dict[tuple, _tiling.Tiling]:
    """The autotuner's choices so far, keyed by (pass, batch, 4*hidden, heads, dtypes, cell, ...) (for reports)."""
    return dict(_best_tiling)
