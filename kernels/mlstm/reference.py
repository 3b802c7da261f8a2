"""Plain-PyTorch mLSTM: parallel, chunkwise and recurrent forms of the exp and sig variants.

These are the obviously-correct versions every fast kernel is tested against. They run on any device.

Notation (per batch element and head): q, k in R^DHQK, v in R^DHV; ``i``, ``f`` are gate pre-activations.
exp variant (xLSTM paper): log input gate = i, log forget gate = logsigmoid(f), stabiliser
  m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
  C_t = f'_t C_{t-1} + i'_t k_t v_t^T,  n_t = f'_t n_{t-1} + i'_t k_t
  h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps)       (q scaled by DHQK^-1/2)
sig variant (TFLA paper): log input gate = logsigmoid(i), no stabiliser (all weights are <= 1),
  h_t = C_t^T q_t / (max(|n_t^T q_t|, 1) + eps) if normalize else C_t^T q_t.

States are stored stabilised: the true memory is exp(m) * C. An absent initial state is the empty memory,
i.e. C = 0, n = 0 and m = -inf, so it never wins the stabiliser maximum. The sig variant carries m = 0.
All arithmetic runs in fp32 (fp64 for fp64 inputs); h is returned in the input dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

# Padding value for input-gate pre-activations: its gate weight underflows to exactly 0 in both variants without
# producing inf - inf in the log-space arithmetic.
_NEG_LARGE = -1e30


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype in which gates, states and accumulations are computed: fp64 stays fp64, all else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _log_gates(igate: torch.Tensor, fgate: torch.Tensor, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    log_i = F.logsigmoid(igate) if variant == "sig" else igate
    return log_i, F.logsigmoid(fgate)


def empty_state(batch: int, heads: int, dqk: int, dv: int, variant: str, device, dtype) -> MLSTMState:
    """The state of an mLSTM that has seen nothing (C = 0, n = 0, m = -inf for exp and 0 for sig)."""
    m_value = float("-inf") if variant == "exp" else 0.0
    return (
        torch.zeros(batch, heads, dqk, dv, device=device, dtype=dtype),
        torch.zeros(batch, heads, dqk, device=device, dtype=dtype),
        torch.full((batch, heads), m_value, device=device, dtype=dtype),
    )


def _normalise(num: torch.Tensor, qn: torch.Tensor, m: torch.Tensor, variant: str, normalize: bool, eps: float):
    """Divide the numerator by the clipped normaliser; qn and m carry a trailing singleton dim for broadcasting.

    exp: num / (max(|qn|, exp(-m)) + eps). For m < 0 it is evaluated as num e / (max(|qn| e, 1) + eps e) with
    e = exp(m), the same value, so that exp(-m) never overflows: below m = -88 (fp32) it would be inf, h would still
    be 0, but the backward pass would multiply 0 by inf and turn the gate gradients into NaN.
    """
    if variant == "exp":
        e = torch.exp(-m.abs())  # exp(-m) for m >= 0, exp(m) for m < 0; never above 1
        small_m = num * e / (torch.clamp(qn.abs() * e, min=1.0) + eps * e)
        return torch.where(m < 0, small_m, num / (torch.maximum(qn.abs(), e) + eps))
    if normalize:
        return num / (torch.clamp(qn.abs(), min=1.0) + eps)
    return num


def _segment_sums(log_f: torch.Tensor, causal: torch.Tensor) -> torch.Tensor:
    """sum_{r=s+1..t} log_f[r] for every (t, s) with s <= t, accumulated per segment.

    Differences of one long cumulative sum lose precision in fp32 (their magnitudes reach |sum log f| over the
    whole sequence); summing each segment from its start keeps the error proportional to the segment itself.
    """
    L = log_f.shape[-1]
    strict = causal.logical_xor(torch.eye(L, dtype=torch.bool, device=log_f.device))
    per_segment = torch.where(strict, log_f.unsqueeze(-1).expand(*log_f.shape, L), 0.0)  # [r, s] = f_r for r > s
    return torch.cumsum(per_segment, dim=-2)


def _parallel_with_state(q, k, v, log_i, log_f, state: MLSTMState | None, variant, normalize, eps,
                         return_last_state: bool):
    """Quadratic form over the last-but-one axis, with an optional initial state; leading dims are batch-like.

    q, k: (..., L, DHQK) with q already scaled; v: (..., L, DHV); log gates: (..., L); state dims match (...).
    Returns h (..., L, DHV) and, if asked, the state after the last step.
    """
    L = q.shape[-2]
    f_cum = torch.cumsum(log_f, dim=-1)  # (..., L)
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    log_d = torch.where(causal, _segment_sums(log_f, causal) + log_i.unsqueeze(-2), float("-inf"))  # (..., t, s)
    if variant == "exp":
        m_intra = log_d.amax(dim=-1)  # (..., L)
        m = m_intra if state is None else torch.maximum(m_intra, f_cum + state[2].unsqueeze(-1))
    else:
        m = torch.zeros_like(f_cum)
    d = torch.exp(log_d - m.unsqueeze(-1))
    scores = (q @ k.transpose(-1, -2)) * d  # (..., t, s)
    num = scores @ v
    qn = scores.sum(-1)
    if state is not None:
        c0, n0, m0 = state
        decay = torch.exp(f_cum + m0.unsqueeze(-1) - m)  # (..., L); 0 for the empty state
        num = num + decay.unsqueeze(-1) * (q @ c0)
        qn = qn + decay * (q @ n0.unsqueeze(-1)).squeeze(-1)
    h = _normalise(num, qn.unsqueeze(-1), m.unsqueeze(-1), variant, normalize, eps)
    if not return_last_state:
        return h, None
    return h, _chunk_final_state(k, v, log_i, log_f, state, variant)


def _chunk_final_state(k, v, log_i, log_f, state: MLSTMState | None, variant) -> MLSTMState:
    """State after the last step of a block of steps, from the block's keys, values and log gates."""
    # decay from each step to the block's end as a suffix sum (no cancellation), plus the step's input gate
    suffix = torch.flip(torch.cumsum(torch.flip(log_f, [-1]), -1), [-1])
    g = suffix[..., :1]  # total log decay of the block, (..., 1)
    log_w = suffix - log_f + log_i  # (..., L)
    if variant == "exp":
        m_new = log_w.amax(dim=-1)
        if state is not None:
            m_new = torch.maximum(m_new, g.squeeze(-1) + state[2])
    else:
        m_new = torch.zeros_like(g.squeeze(-1))
    w = torch.exp(log_w - m_new.unsqueeze(-1))
    c_new = (k * w.unsqueeze(-1)).transpose(-1, -2) @ v
    n_new = (k * w.unsqueeze(-1)).sum(-2)
    if state is not None:
        c0, n0, m0 = state
        carry = torch.exp(g.squeeze(-1) + m0 - m_new)
        c_new = c_new + carry[..., None, None] * c0
        n_new = n_new + carry[..., None] * n0
    return c_new, n_new, m_new


def _as_compute_state(state: MLSTMState | None, variant: str, dt) -> MLSTMState | None:
    """Cast a given state; for sig, fold its scale exp(m) into C and n so that every form carries m = 0."""
    if state is None:
        return None
    c, n, m = (s.to(dt) for s in state)
    if variant == "sig":
        scale = torch.exp(m)
        return c * scale[..., None, None], n * scale[..., None], torch.zeros_like(m)
    return c, n, m


def _prepare(q, k, v, igate, fgate, initial_state, variant):
    dt = compute_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5
    log_i, log_f = _log_gates(igate.to(dt), fgate.to(dt), variant)
    state = _as_compute_state(initial_state, variant, dt)
    return (q.to(dt) * scale, k.to(dt), v.to(dt), log_i, log_f, state)


def mlstm_parallel(q, k, v, igate, fgate, *, variant="exp", initial_state=None, return_last_state=False,
                   normalize=True, eps=1e-6):
    """Stabilised quadratic (attention-like) form over the whole sequence."""
    qs, ks, vs, log_i, log_f, state = _prepare(q, k, v, igate, fgate, initial_state, variant)
    h, last = _parallel_with_state(qs, ks, vs, log_i, log_f, state, variant, normalize, eps, return_last_state)
    h = h.to(q.dtype)
    return (h, last) if return_last_state else h


def _pad_to_chunks(x: torch.Tensor, length: int, value: float, dim: int) -> torch.Tensor:
    pad = length - x.shape[dim]
    if pad == 0:
        return x
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


def mlstm_chunkwise(q, k, v, igate, fgate, *, variant="exp", chunk_size=64, initial_state=None,
                    return_last_state=False, normalize=True, eps=1e-6):
    """Chunkwise form: a sequential recurrence over chunk states, then all chunks' outputs in parallel.

    Any sequence length works: the tail is padded with steps that neither decay nor write the memory.
    """
    qs, ks, vs, log_i, log_f, state = _prepare(q, k, v, igate, fgate, initial_state, variant)
    B, NH, S, DQK = qs.shape
    DV = vs.shape[-1]
    L = chunk_size
    NC = math.ceil(S / L)
    padded = NC * L
    qs, ks, vs = (_pad_to_chunks(x, padded, 0.0, 2).view(B, NH, NC, L, -1) for x in (qs, ks, vs))
    log_i = _pad_to_chunks(log_i, padded, _NEG_LARGE, 2).view(B, NH, NC, L)
    log_f = _pad_to_chunks(log_f, padded, 0.0, 2).view(B, NH, NC, L)

    if state is None:
        state = empty_state(B, NH, DQK, DV, variant, qs.device, qs.dtype)
    # Each chunk's own contribution to the memory at its end, as if it started from the empty memory.
    local_c, local_n, local_m = _chunk_final_state(ks, vs, log_i, log_f, None, variant)
    decay = log_f.sum(-1)  # (B, NH, NC)
    starts_c, starts_n, starts_m = [], [], []
    c, n, m = state
    for chunk in range(NC):
        starts_c.append(c)
        starts_n.append(n)
        starts_m.append(m)
        g = decay[:, :, chunk]
        if variant == "exp":
            m_new = torch.maximum(g + m, local_m[:, :, chunk])
            carry, write = torch.exp(g + m - m_new), torch.exp(local_m[:, :, chunk] - m_new)
        else:
            m_new, carry, write = m, torch.exp(g), torch.ones_like(g)
        c = carry[..., None, None] * c + write[..., None, None] * local_c[:, :, chunk]
        n = carry[..., None] * n + write[..., None] * local_n[:, :, chunk]
        m = m_new
    chunk_states = (torch.stack(starts_c, 2), torch.stack(starts_n, 2), torch.stack(starts_m, 2))
    h, _ = _parallel_with_state(qs, ks, vs, log_i, log_f, chunk_states, variant, normalize, eps, False)
    h = h.reshape(B, NH, padded, DV)[:, :, :S].to(q.dtype)
    return (h, (c, n, m)) if return_last_state else h


def mlstm_step(q, k, v, igate, fgate, state: MLSTMState | None, *, variant="exp", normalize=True, eps=1e-6):
    """One recurrent step. q, k: (B, NH, DHQK), v: (B, NH, DHV), gates: (B, NH). Returns (h, new_state)."""
    dt = compute_dtype(q.dtype)
    B, NH, DQK = q.shape
    if state is None:
        state = empty_state(B, NH, DQK, v.shape[-1], variant, q.device, dt)
    c, n, m = _as_compute_state(state, variant, dt)
    log_i, log_f = _log_gates(igate.to(dt), fgate.to(dt), variant)
    if variant == "exp":
        m_new = torch.maximum(log_f + m, log_i)
        forget, write = torch.exp(log_f + m - m_new), torch.exp(log_i - m_new)
    else:
        m_new, forget, write = m, torch.exp(log_f), torch.exp(log_i)
    kd, vd, qd = k.to(dt), v.to(dt), q.to(dt) * DQK**-0.5
    c = forget[..., None, None] * c + write[..., None, None] * (kd.unsqueeze(-1) * vd.unsqueeze(-2))
    n = forget[..., None] * n + write[..., None] * kd
    num = (qd.unsqueeze(-2) @ c).squeeze(-2)
    qn = (qd * n).sum(-1, keepdim=True)
    h = _normalise(num, qn, m_new.unsqueeze(-1), variant, normalize, eps)
    return h.to(q.dtype), (c, n, m_new)


def mlstm_recurrent(q, k, v, igate, fgate, *, variant="exp", initial_state=None, return_last_state=False,
                    normalize=True, eps=1e-6):
    """Sequence form built from the step: a loop over time, constant memory in the sequence length."""
    state = initial_state
    outputs = []
    for t in range(q.shape[2]):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], igate[:, :, t], fgate[:, :, t], state,
                              variant=variant, normalize=normalize, eps=eps)
        outputs.append(h)
    h = torch.stack(outputs, dim=2)
    return (h, state) if return_last_state else h
