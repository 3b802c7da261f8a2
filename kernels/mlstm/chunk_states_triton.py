"""The mLSTM memory at every chunk boundary, in two launches: a parallel per-chunk kernel and a scan across chunks.

Forward (over k, v): with g_c the chunk's total log forget gate and b_s the chunk-local cumulative one,
  local_c = sum_s exp(g_c - b_s + li_s - l_c) k_s [v_s, 1]^T,   l_c = max_s (g_c - b_s + li_s)   (sig: l_c = 0)
  m_{c+1} = max(g_c + m_c, l_c),   C_{c+1} = exp(g_c + m_c - m_{c+1}) C_c + exp(l_c - m_{c+1}) local_c.
Backward (over q * scale, dnum and d qn), walking the chunks in reverse, with m from the forward pass:
  local_c = sum_r exp(b_r + m_c - m_r) q_r [dnum_r, dqn_r]^T,   dC_c = exp(g_c + m_c - m_{c+1}) dC_{c+1} + local_c.
All chunks' local terms are independent matrix products (`_local_kernel`, one program per block of state rows and
chunk, so the whole GPU works on them at once); only the elementwise scan (`_scan_kernel`) walks the chunks in order,
which makes it bound by memory bandwidth rather than by the latency of dependent matrix products.

States live in the slots of kernels/mlstm/chunk_layout.py, in the inputs' dtype (what the intra kernel reads; bf16
inputs: half the bytes of fp32). The local kernel writes each chunk's term, rounded to that dtype, into the slot of
the state it feeds (forward: the state after the chunk; reverse: the gradient before it); the scan carries the state
in fp32, reads each local term from its slot and overwrites it with the carried state, and writes the fp32 state
where the walk ends (the last state, or the initial state's gradient) to a per-sequence buffer. Rounding the local
terms costs about what rounding the carried states already does, and takes the fp32 round trip (4 bytes written
and read per state element and pass) off the state pass.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunk_layout import ChunkLayout
from kernels.mlstm.tiles_triton import TileChoice
from kernels.mlstm.tma import rows_descriptor, states_descriptor, tma_applies


@triton.jit
def chunk_base(CHUNKS, chunk, n_chunks, NH, S, head):
    """Length of the chunk, its first token's offset (int64) and its start-state slot, from the chunk table of
    kernels/mlstm/chunk_layout.py."""
    length = tl.load(CHUNKS + 2 * n_chunks + chunk)
    row = tl.load(CHUNKS + chunk)
    start = tl.load(CHUNKS + n_chunks + chunk)
    slot = tl.load(CHUNKS + 3 * n_chunks + chunk).to(tl.int64)
    return length, (row.to(tl.int64) * NH + head) * S + start, slot


@triton.jit
def logsigmoid(x):
    return tl.minimum(x, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def max_combine(a, b):
    """Combine function of a running max (tl.associative_scan)."""
    return tl.maximum(a, b)


@triton.jit
def chunk_gates(ig_ptr, fg_ptr, gb_ptr, gli_ptr, gmax_ptr, length, store, SIG: tl.constexpr, BLOCK: tl.constexpr):
    """One chunk's gates (pointers at its first token), BLOCK lanes in fp32: b (cumulative log forget gates) and li
    (log input gates), returned; with `store` also written, with (exp only) max_{s <= t} (li_s - b_s), the in-chunk
    part of the row stabiliser m_t = b_t + max(m_state, that max)."""
    offs = tl.arange(0, BLOCK)
    mask = offs < length
    f = tl.load(fg_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.cumsum(tl.where(mask, logsigmoid(f), 0.0), axis=0)
    li = tl.load(ig_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if SIG:
        li = logsigmoid(li)
    else:
        run = tl.associative_scan(tl.where(mask, li - b, float("-inf")), 0, max_combine)
        tl.store(gmax_ptr + offs, run, mask=mask & store)
    tl.store(gb_ptr + offs, b, mask=mask & store)
    tl.store(gli_ptr + offs, li, mask=mask & store)
    return b, li


@triton.jit
def _gate_rows(gb_ptr, gli_ptr, mrows_ptr, offs_l, mask_l, REVERSE: tl.constexpr, SIG: tl.constexpr):
    """b and the second per-token term of the local weights (forward li, reverse m_t; sig reverse: none) from memory."""
    b = tl.load(gb_ptr + offs_l, mask=mask_l, other=0.0)
    if REVERSE:
        if SIG:
            second = b
        else:
            second = tl.load(mrows_ptr + offs_l, mask=mask_l, other=0.0)
    else:
        second = tl.load(gli_ptr + offs_l, mask=mask_l, other=0.0)
    return b, second


@triton.jit
def _weighted_rows(a_ptr, xaug_ptr, offs_a, mask_a, offs_l, mask_l, b, second, g, shift, a_mult,
                   DA: tl.constexpr, REVERSE: tl.constexpr, SIG: tl.constexpr, HAS_XAUG: tl.constexpr):
    """Tokens offs_l of one chunk as the local product's left operand: the BA x BL block of A^T with each token's
    weight applied (in A's dtype), and its share of the vector term (fp32).

    Weights from b and `second` (`_gate_rows`): forward exp(g - b_s + li_s - shift) with shift the chunk's max (0 for
    sig); reverse exp(b_r + shift - m_r) with shift the state's m (b_r alone for sig).
    """
    if REVERSE:
        if SIG:
            w = tl.exp(b)
        else:
            w = tl.exp(b + shift - second)
    else:
        w = tl.exp(g - b + second - shift)
    w = tl.where(mask_l, w * a_mult, 0.0)
    a_t = tl.load(a_ptr + offs_l[None, :] * DA + offs_a[:, None], mask=mask_a[:, None] & mask_l[None, :],
                  other=0.0).to(tl.float32)
    if HAS_XAUG:
        vec = tl.sum(a_t * (w * tl.load(xaug_ptr + offs_l, mask=mask_l, other=0.0))[None, :], axis=1)
    else:
        vec = tl.sum(a_t * w[None, :], axis=1)
    return (a_t * w[None, :]).to(a_ptr.dtype.element_ty), vec


@triton.jit
def _local_kernel(
    A, X, XAUG, GB, GLI, MROWS, MSTATE, OUT_C, OUT_N, CHUNK_G, CHUNK_L, CHUNKS, IG, FG, GMAX, X_DESC, C_DESC,
    n_chunks, NH, S, a_mult,
    DA: tl.constexpr, DX: tl.constexpr, REVERSE: tl.constexpr, SIG: tl.constexpr, HAS_XAUG: tl.constexpr,
    GATES: tl.constexpr, PRECISION: tl.constexpr, BLOCK_L: tl.constexpr, BL: tl.constexpr, BA: tl.constexpr,
    BX: tl.constexpr, TMA: tl.constexpr,
):
    """BA rows of one chunk's local term (all DX columns, in blocks of BX; stored in OUT_C's dtype), its share of the
    vector term (fp32) and the chunk's scalars.

    A chunk of at most BL tokens (BL == BLOCK_L) has its A rows read once, transposed straight from memory, and
    weighted; that (BA x chunk) operand stays on chip while the X column blocks stream through the product unchanged
    (with TMA: as bulk copies, and the local terms leave the same way; -0.05 ms per launch on an H100, session 15).
    Longer chunks would not fit on chip that way: each X column block then sums the chunk's BL-token segments.
    GATES (forward, whole chunks): the gates come from IG / FG (`chunk_gates`, every program; the first one of the
    chunk writes GB, GLI, GMAX for the later kernels) instead of from GB / GLI, which saves the gate kernel's launch.
    """
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    head = tl.program_id(2)
    offs_a = pid * BA + tl.arange(0, BA)
    mask_a = offs_a < DA
    length, tok0, slot = chunk_base(CHUNKS, chunk, n_chunks, NH, S, head)
    # the chunk's own base pointers keep every tile offset below in 32 bits
    a_ptr, x_ptr, gb_ptr, gli_ptr = A + tok0 * DA, X + tok0 * DX, GB + tok0, GLI + tok0
    mrows_ptr, xaug_ptr = MROWS + tok0, XAUG + tok0
    offs_c = tl.arange(0, BLOCK_L)
    mask_c = offs_c < length
    if GATES:
        b_c, li_c = chunk_gates(IG + tok0, FG + tok0, gb_ptr, gli_ptr, GMAX + tok0, length, pid == 0, SIG, BLOCK_L)
        g = tl.sum(tl.where(offs_c == length - 1, b_c, 0.0), axis=0)
    else:
        g = tl.load(gb_ptr + length - 1)
    scalar = chunk.to(tl.int64) * NH + head
    tl.store(CHUNK_G + scalar, g, mask=pid == 0)
    if REVERSE:
        out = slot * NH + head
        shift = 0.0 if SIG else tl.load(MSTATE + out)
    else:
        out = (slot + 1) * NH + head
        shift = 0.0
        if not SIG:
            if not GATES:
                b_c, li_c = _gate_rows(gb_ptr, gli_ptr, mrows_ptr, offs_c, mask_c, False, SIG)
            shift = tl.max(tl.where(mask_c, g - b_c + li_c, float("-inf")), axis=0)
            tl.store(CHUNK_L + scalar, shift, mask=pid == 0)
    c_ptr = OUT_C + out * DA * DX
    rows = (a_ptr, xaug_ptr, offs_a, mask_a)
    weights = (g, shift, a_mult, DA, REVERSE, SIG, HAS_XAUG)
    if BL == BLOCK_L:
        if GATES:
            b_l, second = b_c, li_c
        else:
            b_l, second = _gate_rows(gb_ptr, gli_ptr, mrows_ptr, offs_c, mask_c, REVERSE, SIG)
        aw, vec = _weighted_rows(*rows, offs_c, mask_c, b_l, second, *weights)
    else:
        vec = tl.zeros((BA,), dtype=tl.float32)
        for l0 in range(0, length, BL):
            offs_l = l0 + tl.arange(0, BL)
            mask_l = offs_l < length
            b_l, second = _gate_rows(gb_ptr, gli_ptr, mrows_ptr, offs_l, mask_l, REVERSE, SIG)
            vec += _weighted_rows(*rows, offs_l, mask_l, b_l, second, *weights)[1]
    tl.store(OUT_N + out * DA + offs_a, vec, mask=mask_a)
    for x0 in range(0, DX, BX):
        offs_x = x0 + tl.arange(0, BX)
        mask_x = offs_x < DX
        if TMA:  # whole chunk; rows past it (the next chunk's) meet zero columns of aw
            acc = tl.dot(aw, X_DESC.load([tok0.to(tl.int32), x0]), input_precision=PRECISION, out_dtype=tl.float32)
        elif BL == BLOCK_L:
            xb = tl.load(x_ptr + offs_c[:, None] * DX + offs_x[None, :], mask=mask_c[:, None] & mask_x[None, :],
                         other=0.0)
            acc = tl.dot(aw, xb, input_precision=PRECISION, out_dtype=tl.float32)
        else:
            acc = tl.zeros((BA, BX), dtype=tl.float32)
            for l0 in range(0, length, BL):
                offs_l = l0 + tl.arange(0, BL)
                mask_l = offs_l < length
                b_l, second = _gate_rows(gb_ptr, gli_ptr, mrows_ptr, offs_l, mask_l, REVERSE, SIG)
                aw_seg = _weighted_rows(*rows, offs_l, mask_l, b_l, second, *weights)[0]
                xb = tl.load(x_ptr + offs_l[:, None] * DX + offs_x[None, :], mask=mask_l[:, None] & mask_x[None, :],
                             other=0.0)
                acc = tl.dot(aw_seg, xb, acc, input_precision=PRECISION)
        if TMA:
            C_DESC.store([out.to(tl.int32), pid * BA, x0], acc.to(OUT_C.dtype.element_ty).reshape(1, BA, BX))
        else:
            tl.store(c_ptr + offs_a[:, None] * DX + offs_x[None, :], acc.to(OUT_C.dtype.element_ty),
                     mask=mask_a[:, None] & mask_x[None, :])


@triton.jit
def _scan_block(STATE, END, INIT, INIT_M, MSTATE, CHUNK_G, CHUNK_L, SEQS, n_seqs, NH, size, block, seq, head,
                REVERSE: tl.constexpr, SIG: tl.constexpr, HAS_INIT: tl.constexpr, WRITE_M: tl.constexpr,
                WRITE_END: tl.constexpr, BLOCK: tl.constexpr):
    """One block of the flattened matrix (or vector) state of one sequence and head, carried across its chunks.

    STATE holds each chunk's local term on entry; the carried state (fp32 in registers) replaces it at every slot,
    in STATE's dtype. With WRITE_END the fp32 state where the walk ends also goes to END (n_seqs, NH, size). With
    WRITE_M (forward) block 0 also writes the stabiliser m of every slot.
    """
    offs = block * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    first_chunk = tl.load(SEQS + seq)
    n_seq_chunks = tl.load(SEQS + n_seqs + seq)
    first_slot = tl.load(SEQS + 2 * n_seqs + seq).to(tl.int64)
    head_seq = seq.to(tl.int64) * NH + head
    if HAS_INIT:
        acc = tl.load(INIT + head_seq * size + offs, mask=mask, other=0.0)
    else:
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
    edge = first_slot + n_seq_chunks if REVERSE else first_slot
    tl.store(STATE + (edge * NH + head) * size + offs, acc.to(STATE.dtype.element_ty), mask=mask)
    if SIG:
        m = tl.full([], 0.0, tl.float32)
    elif HAS_INIT and not REVERSE:
        m = tl.load(INIT_M + head_seq)
    else:
        m = tl.full([], float("-inf"), tl.float32)
    if WRITE_M:
        tl.store(MSTATE + edge * NH + head, m, mask=block == 0)
    for it in range(n_seq_chunks):
        if REVERSE:
            j = n_seq_chunks - 1 - it
            dst = first_slot + j
        else:
            j = it
            dst = first_slot + j + 1
        g = tl.load(CHUNK_G + (first_chunk + j).to(tl.int64) * NH + head)
        if SIG:
            carry = tl.exp(g)
            scale = 1.0
        elif REVERSE:
            m_before = tl.load(MSTATE + (first_slot + j) * NH + head)
            carry = tl.exp(g + m_before - tl.load(MSTATE + (first_slot + j + 1) * NH + head))
            scale = 1.0
        else:
            local = tl.load(CHUNK_L + (first_chunk + j).to(tl.int64) * NH + head)
            m_end = tl.maximum(g + m, local)
            carry = tl.exp(g + m - m_end)
            scale = tl.exp(local - m_end)
            m = m_end
        if WRITE_M:
            tl.store(MSTATE + dst * NH + head, m, mask=block == 0)
        ptrs = STATE + (dst * NH + head) * size + offs
        acc = carry * acc + scale * tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        tl.store(ptrs, acc.to(STATE.dtype.element_ty), mask=mask)
    if WRITE_END:
        tl.store(END + head_seq * size + offs, acc, mask=mask)


@triton.jit
def _scan_kernel(
    STATE_C, END, INIT_C, STATE_N, INIT_N, INIT_M, MSTATE, CHUNK_G, CHUNK_L, SEQS, n_seqs, NH, size_c, size_n,
    c_blocks, REVERSE: tl.constexpr, SIG: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK: tl.constexpr,
):
    """The matrix states (the first c_blocks programs along axis 0, each one block; the fp32 end state to END) and
    the vector states (the programs after them; the forward's first one also writes m) in one launch, so that the
    short vector scan, which is bound by the latency of its chunk steps, runs beside the matrix scan."""
    pid = tl.program_id(0)
    seq = tl.program_id(1)
    head = tl.program_id(2)
    if pid < c_blocks:
        _scan_block(STATE_C, END, INIT_C, INIT_M, MSTATE, CHUNK_G, CHUNK_L, SEQS, n_seqs, NH, size_c, pid, seq, head,
                    REVERSE, SIG, HAS_INIT, False, True, BLOCK)
    else:
        _scan_block(STATE_N, END, INIT_N, INIT_M, MSTATE, CHUNK_G, CHUNK_L, SEQS, n_seqs, NH, size_n, pid - c_blocks,
                    seq, head, REVERSE, SIG, HAS_INIT, not REVERSE, False, BLOCK)


def pow2_block(x: int, low: int = 16, high: int | None = None) -> int:
    """The power of two >= x (at least `low`, at most `high`): a block size for x elements."""
    p = max(low, triton.next_power_of_2(x))
    return p if high is None else min(p, high)


def _descriptor_blocks(args: dict) -> None:
    """pre_hook of the local kernel's configs: block shapes of its descriptors (if it got them) from its tiles."""
    if args["TMA"]:
        args["X_DESC"].block_shape = [args["BLOCK_L"], args["BX"]]
        args["C_DESC"].block_shape = [1, args["BA"], args["BX"]]


def _local_tiles() -> TileChoice:
    """The local kernel's tiles (BA rows of the state per program, BX columns per step), pinned from the H100 sweep at
    DHQK=256, DHV=512, chunk 256, bf16 (benchmarks/results/mlstm_tiles.json; with TMA: mlstm_tma_local_s15.json, the
    same winner); fp32 inputs take a narrow config."""
    conf = lambda ba, bx, warps, stages: triton.Config({"BA": ba, "BX": bx}, num_warps=warps, num_stages=stages,
                                                       pre_hook=_descriptor_blocks)
    configs = [conf(64, 128, 4, 2), conf(64, 64, 4, 3), conf(64, 128, 8, 2), conf(128, 64, 8, 2), conf(64, 32, 4, 2),
               conf(64, 64, 8, 2), conf(64, 64, 4, 2), conf(64, 32, 4, 3), conf(64, 32, 4, 4)]
    return TileChoice(_local_kernel, configs, pinned={"fwd": 8, "rev": 8, "fp32": 4}, small=conf(16, 32, 4, 1),
                      key=["DA", "DX", "REVERSE", "SIG", "HAS_XAUG"])


LOCAL_TILES = _local_tiles()
# the longest chunk (of 2-byte inputs; fp32: half) whose weighted A block the local kernel keeps on chip; longer
# chunks are summed in segments of this length
LOCAL_SEGMENT = 256


def _segment(chunk_size: int, dtype: torch.dtype) -> int:
    """Tokens per step of the local kernel: the whole chunk, or LOCAL_SEGMENT (scaled to the dtype) for longer ones."""
    return pow2_block(chunk_size, high=LOCAL_SEGMENT * 2 // dtype.itemsize)


def local_holds_chunk(chunk_size: int, dtype: torch.dtype) -> bool:
    """Whether the local kernel keeps a whole chunk of inputs in `dtype` on chip (and can then form its gates)."""
    return _segment(chunk_size, dtype) == pow2_block(chunk_size)


def state_buffers(layout: ChunkLayout, NH: int, DA: int, DX: int, dtype: torch.dtype, device) -> tuple:
    """(out_c, out_end, out_n) for `chunk_states`: the matrix states at every slot in the inputs' dtype, the fp32
    matrix state where each sequence's walk ends, the fp32 vector states at every slot."""
    out_c = torch.empty(layout.n_slots, NH, DA, DX, device=device, dtype=dtype)
    out_end = torch.empty(layout.n_seqs, NH, DA, DX, device=device, dtype=torch.float32)
    return out_c, out_end, torch.empty(layout.n_slots, NH, DA, device=device, dtype=torch.float32)


def chunk_states(layout: ChunkLayout, chunk_size: int, *, A, X, gb, gli, mstate, out_c, out_end, out_n, init,
                 a_mult: float, reverse: bool, sig: bool, precision: str, xaug=None, mrows=None, gates=None) -> None:
    """Fill out_c (n_slots, NH, DA, DX, any float dtype: the inputs' one) and out_n (n_slots, NH, DA, fp32) with the
    states at every chunk boundary, and out_end (n_seqs, NH, DA, DX, fp32) with the matrix state where each
    sequence's walk ends (forward: after its last chunk, reverse: before its first).
    Forward (reverse=False): A = k, X = v, init = (C0, n0, m0) or None; also fills mstate (n_slots, NH).
    Reverse: A = q, X = dnum, xaug = d qn, a_mult = scale, mrows = the forward's row stabilisers, mstate as the
    forward filled it, init = (dC_last, dn_last, None) or None; gives the state gradients.
    gates = (igate, fgate, gmax) (forward, `local_holds_chunk` only): gb, gli and gmax are not read but filled from the
    gate pre-activations by the local kernel.
    """
    if gates is not None and (reverse or not local_holds_chunk(chunk_size, A.dtype)):
        raise ValueError("the local kernel forms the gates only in the forward pass over whole chunks")
    NH, S, DA = A.shape[1], A.shape[2], A.shape[3]
    DX = X.shape[-1]
    chunk_g = torch.empty(layout.n_chunks, NH, device=A.device, dtype=torch.float32)
    chunk_l = torch.empty_like(chunk_g)
    dummy = gb

    def grid(meta):
        return (triton.cdiv(DA, meta["BA"]), layout.n_chunks, NH)

    # whole chunks of 16-bit inputs: X read and the local terms written through TMA descriptors
    tma = local_holds_chunk(chunk_size, A.dtype) and tma_applies(X, out_c)
    descs = (rows_descriptor(X), states_descriptor(out_c)) if tma else (None, None)
    LOCAL_TILES.launch(
        "fp32" if A.dtype == torch.float32 else ("rev" if reverse else "fwd"), grid,
        A, X, xaug if xaug is not None else dummy, gb, gli, mrows if mrows is not None else dummy, mstate,
        out_c, out_n, chunk_g, chunk_l, layout.chunks, *(gates if gates is not None else (dummy,) * 3), *descs,
        layout.n_chunks, NH, S, a_mult, DA=DA, DX=DX, REVERSE=reverse, SIG=sig, HAS_XAUG=xaug is not None,
        GATES=gates is not None, PRECISION=precision, BLOCK_L=pow2_block(chunk_size), BL=_segment(chunk_size, A.dtype),
        TMA=tma,
    )
    init_c, init_n, init_m = (x if x is not None else dummy for x in (init or (None, None, None)))
    BLOCK = 1024
    c_blocks = triton.cdiv(DA * DX, BLOCK)
    _scan_kernel[(c_blocks + triton.cdiv(DA, BLOCK), layout.n_seqs, NH)](
        out_c, out_end, init_c, out_n, init_n, init_m, mstate, chunk_g, chunk_l, layout.seqs, layout.n_seqs, NH,
        DA * DX, DA, c_blocks, REVERSE=reverse, SIG=sig, HAS_INIT=init is not None, BLOCK=BLOCK, num_warps=4,
    )
