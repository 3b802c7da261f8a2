"""Fused recurrent mLSTM step in Triton (one token, state in/out, optional in-place update) and the sequence form
built on it. Forward only: generation and inference; train with the chunkwise kernels.

A step is two launches: `_step_memory_kernel` updates C tile by tile (each tile read and written by one program,
so in place is safe) and produces h; `_step_vector_kernel` then updates n and m, which every program of the first
launch reads. Semantics and the sig variant's m convention as in kernels/mlstm/chunkwise_triton.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.mlstm.chunk_states_triton import logsigmoid
from kernels.mlstm.chunk_states_triton import pow2_block as _pow2
from kernels.mlstm.reference import MLSTMState


@triton.jit
def _gate_update(ig, fg, m_old, SIG: tl.constexpr):
    """From the input / forget gate pre-activations and the old stabiliser: the stabiliser after the step and the
    weights of the old memory and of the new key-value outer product."""
    log_f = logsigmoid(fg)
    log_i = logsigmoid(ig) if SIG else ig
    if SIG:
        m_new = log_f * 0.0
    else:
        m_new = tl.maximum(log_f + m_old, log_i)
    return m_new, tl.exp(log_f + m_old - m_new), tl.exp(log_i - m_new)


@triton.jit
def _step_gates(IG, FG, M, bh, NH, stride_gb, stride_gh, SIG: tl.constexpr, HAS_STATE: tl.constexpr):
    """`_gate_update` for the gates of program (batch * head) bh, read from IG / FG, and the old stabiliser from M."""
    off = (bh // NH) * stride_gb + (bh % NH) * stride_gh
    if HAS_STATE:
        m_old = tl.load(M + bh)
    elif SIG:
        m_old = 0.0
    else:
        m_old = float("-inf")
    return _gate_update(tl.load(IG + off).to(tl.float32), tl.load(FG + off).to(tl.float32), m_old, SIG)


@triton.jit
def _step_memory_kernel(Q, K, V, IG, FG, C, N, M, C_OUT, H, NH, DK, DV, stride_qb, stride_qh, stride_vb, stride_vh,
                        stride_hb, stride_hh, stride_gb, stride_gh, scale, eps,
                        SIG: tl.constexpr, NORMALIZE: tl.constexpr, HAS_STATE: tl.constexpr,
                        BK: tl.constexpr, BV: tl.constexpr):
    bh = tl.program_id(0)
    offs_v = tl.program_id(1) * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    m_new, forget, write = _step_gates(IG, FG, M, bh, NH, stride_gb, stride_gh, SIG, HAS_STATE)
    q_base = (bh // NH) * stride_qb + (bh % NH) * stride_qh
    v = tl.load(V + (bh // NH) * stride_vb + (bh % NH) * stride_vh + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    num = tl.zeros((BV,), dtype=tl.float32)
    qn_parts = tl.zeros((BK,), dtype=tl.float32)
    for k0 in range(0, DK, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < DK
        q = tl.load(Q + q_base + offs_k, mask=mask_k, other=0.0).to(tl.float32) * scale
        k = tl.load(K + q_base + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        tile = (bh.to(tl.int64) * DK + offs_k[:, None]) * DV + offs_v[None, :]
        mask = mask_k[:, None] & mask_v[None, :]
        c = write * k[:, None] * v[None, :]
        n = write * k
        if HAS_STATE:
            c += forget * tl.load(C + tile, mask=mask, other=0.0)
            n += forget * tl.load(N + bh * DK + offs_k, mask=mask_k, other=0.0)
        tl.store(C_OUT + tile, c, mask=mask)
        num += tl.sum(q[:, None] * c, axis=0)
        qn_parts += q * n
    qn = tl.sum(qn_parts, axis=0)
    if SIG:
        if NORMALIZE:
            num = num / (tl.maximum(tl.abs(qn), 1.0) + eps)
    else:
        num = num / (tl.maximum(tl.abs(qn), tl.exp(-m_new)) + eps)
    tl.store(H + (bh // NH) * stride_hb + (bh % NH) * stride_hh + offs_v, num.to(H.dtype.element_ty), mask=mask_v)


@triton.jit
def _step_vector_kernel(K, IG, FG, N, M, N_OUT, M_OUT, NH, DK, stride_qb, stride_qh, stride_gb, stride_gh,
                        SIG: tl.constexpr, HAS_STATE: tl.constexpr, BK: tl.constexpr):
    bh = tl.program_id(0)
    m_new, forget, write = _step_gates(IG, FG, M, bh, NH, stride_gb, stride_gh, SIG, HAS_STATE)
    k_base = (bh // NH) * stride_qb + (bh % NH) * stride_qh
    for k0 in range(0, DK, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < DK
        n = write * tl.load(K + k_base + offs_k, mask=mask_k, other=0.0).to(tl.float32)
        if HAS_STATE:
            n += forget * tl.load(N + bh * DK + offs_k, mask=mask_k, other=0.0)
        tl.store(N_OUT + bh * DK + offs_k, n, mask=mask_k)
    tl.store(M_OUT + bh, m_new)


def _launch_step(q, k, v, igate, fgate, state, out_state, h, variant: str, normalize: bool, eps: float) -> None:
    """One step from `state` (or the empty state when None) into `out_state` and h; q, k, v, h: (B, NH, D) views
    with unit stride on the last dim, gates (B, NH) views, states contiguous fp32."""
    B, NH, DK = q.shape
    DV = v.shape[-1]
    c_out, n_out, m_out = out_state
    c, n, m = state if state is not None else out_state
    BK, BV = _pow2(DK, high=64), _pow2(DV, high=64)
    common = dict(SIG=variant == "sig", HAS_STATE=state is not None)
    _step_memory_kernel[(B * NH, triton.cdiv(DV, BV))](
        q, k, v, igate, fgate, c, n, m, c_out, h, NH, DK, DV, q.stride(0), q.stride(1), v.stride(0), v.stride(1),
        h.stride(0), h.stride(1), igate.stride(0), igate.stride(1), DK**-0.5, eps,
        NORMALIZE=normalize, BK=BK, BV=BV, **common)
    _step_vector_kernel[(B * NH,)](k, igate, fgate, n, m, n_out, m_out, NH, DK, k.stride(0), k.stride(1),
                                   igate.stride(0), igate.stride(1), BK=BK, **common)


def _unit_last(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(x if x.stride(-1) == 1 else x.contiguous() for x in xs)


def _new_state(batch: int, heads: int, dk: int, dv: int, device) -> MLSTMState:
    return (torch.empty(batch, heads, dk, dv, device=device, dtype=torch.float32),
            torch.empty(batch, heads, dk, device=device, dtype=torch.float32),
            torch.empty(batch, heads, device=device, dtype=torch.float32))


@torch.compiler.disable
def mlstm_step_triton(q, k, v, igate, fgate, state: MLSTMState | None, *, variant: str, normalize: bool, eps: float,
                      inplace: bool):
    """One mLSTM step: q, k (B, NH, DHQK), v (B, NH, DHV), gates (B, NH). Returns (h, new_state).

    inplace=True overwrites the given state buffers (fp32, contiguous) and returns them, which keeps their
    addresses fixed for CUDA-graph capture; with state None it allocates a fresh state either way.
    """
    B, NH, DK = q.shape
    q, k, v = _unit_last(q, k, v)
    if inplace and state is not None:
        if any(s.dtype != torch.float32 or not s.is_contiguous() for s in state):
            raise ValueError("inplace=True needs the state (C, n, m) as contiguous fp32 tensors")
        out_state = tuple(state)
    else:
        out_state = _new_state(B, NH, DK, v.shape[-1], q.device)
        if state is not None:
            state = tuple(s.float().contiguous() for s in state)
    h = torch.empty_like(v)
    _launch_step(q, k, v, igate, fgate, state, out_state, h, variant, normalize, eps)
    return h, out_state


@torch.compiler.disable
def mlstm_recurrent_triton(q, k, v, igate, fgate, *, variant: str, initial_state: MLSTMState | None,
                           return_last_state: bool, normalize: bool, eps: float, cu_seqlens: torch.Tensor | None):
    """Sequence form: one fused step launch pair per token, state kept in place; forward only.

    Raises ValueError if gradients are requested (use form='chunkwise' to train).
    """
    tensors = [q, k, v, igate, fgate, *(initial_state or ())]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        raise ValueError("the Triton recurrent mLSTM form is forward-only (generation/inference); use "
                         "form='chunkwise' for gradients, or run under torch.no_grad()")
    B, NH, S, DK = q.shape
    DV = v.shape[-1]
    bounds = [0, S] if cu_seqlens is None else [int(b) for b in cu_seqlens.tolist()]
    n_states = B if cu_seqlens is None else len(bounds) - 1
    state = _new_state(n_states, NH, DK, DV, q.device)
    if initial_state is not None:
        for buf, init in zip(state, initial_state):
            buf.copy_(init)
    h = torch.empty_like(v)
    for seq, (start, end) in enumerate(zip(bounds, bounds[1:])):
        rows = slice(None) if cu_seqlens is None else slice(seq, seq + 1)
        seq_state = tuple(s[rows] for s in state)
        for t in range(start, end):
            has_state = initial_state is not None or t > start
            _launch_step(*_unit_last(q[:, :, t], k[:, :, t], v[:, :, t]), igate[:, :, t], fgate[:, :, t],
                         seq_state if has_state else None, seq_state, h[:, :, t], variant, normalize, eps)
    return (h, state) if return_last_state else h
