"""Plain-PyTorch sLSTM: scalar memory, exponential gating with a log-space stabiliser, head-wise recurrence.

Per step, with pre-activations x_t = (i, f, z, o) and the previous hidden state mixed in head by head:
  (i~, f~, z~, o~) = x_t + h_{t-1} R + b          (R block-diagonal: one DH x DH matrix per gate and head)
  m_t = max(logsigmoid(f~) + m_{t-1}, i~)
  c_t = exp(logsigmoid(f~) + m_{t-1} - m_t) c_{t-1} + exp(i~ - m_t) tanh(z~)
  n_t = exp(logsigmoid(f~) + m_{t-1} - m_t) n_{t-1} + exp(i~ - m_t)
  h_t = sigmoid(o~) * c_t / n_t
The forget gate is a sigmoid kept in log space; the input gate is exponential. An absent initial state is
c = n = h = 0 and m = -inf, so the first step sets m = i~ and n = 1, and n_t >= 1 from then on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.mlstm.reference import compute_dtype

SLSTMState = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def empty_state(batch: int, hidden: int, device, dtype) -> SLSTMState:
    """c, n, h = 0 and m = -inf, each (B, NH*DH)."""
    zeros = torch.zeros(batch, hidden, device=device, dtype=dtype)
    return zeros, zeros.clone(), torch.full_like(zeros, float("-inf")), zeros.clone()


def slstm_cell(pre: torch.Tensor, state: SLSTMState) -> SLSTMState:
    """Gate math of one step given all pre-activations (B, 4, H) (recurrent part included)."""
    c, n, m, _ = state
    i_pre, f_pre, z_pre, o_pre = pre.unbind(1)
    log_f = F.logsigmoid(f_pre)
    m_new = torch.maximum(log_f + m, i_pre)
    forget = torch.exp(log_f + m - m_new)
    write = torch.exp(i_pre - m_new)
    c_new = forget * c + write * torch.tanh(z_pre)
    n_new = forget * n + write
    h_new = torch.sigmoid(o_pre) * c_new / n_new
    return c_new, n_new, m_new, h_new


def lstm_cell(pre: torch.Tensor, state: SLSTMState) -> SLSTMState:
    """Classic LSTM gate math (sigmoid i, f, o; tanh z and tanh(c)) in the same state layout; n stays 1, m 0."""
    c, n, m, _ = state
    i_pre, f_pre, z_pre, o_pre = pre.unbind(1)
    c_new = torch.sigmoid(f_pre) * c + torch.sigmoid(i_pre) * torch.tanh(z_pre)
    h_new = torch.sigmoid(o_pre) * torch.tanh(c_new)
    return c_new, torch.ones_like(n), torch.zeros_like(m), h_new


CELLS = {"slstm": slstm_cell, "lstm": lstm_cell}


def slstm_recurrent(x: torch.Tensor, recurrent_weight: torch.Tensor, bias: torch.Tensor, num_heads: int, *,
                    initial_state: SLSTMState | None = None, return_last_state: bool = False, cell: str = "slstm"):
    """Loop over time. x: (B, T, 4*NH*DH); recurrent_weight: (4, NH, DH, DH); bias: (4*NH*DH,).

    Returns h (B, T, NH*DH) in the input dtype and, if asked, (c, n, m, h_last) in fp32.
    """
    B, T, _ = x.shape
    hidden = x.shape[-1] // 4
    dh = hidden // num_heads
    dt = compute_dtype(x.dtype)
    if initial_state is None:
        state = empty_state(B, hidden, x.device, dt)
        if cell == "lstm":
            state = (state[0], state[1], torch.zeros_like(state[2]), state[3])
    else:
        state = tuple(s.to(dt) for s in initial_state)
    step = CELLS[cell]
    xs = (x.to(dt) + bias.to(dt)).view(B, T, 4, hidden)
    r = recurrent_weight.to(dt)
    outputs = []
    for t in range(T):
        h_prev = state[3].view(B, num_heads, dh)
        mixed = torch.einsum("bhd,ghde->bghe", h_prev, r).reshape(B, 4, hidden)
        state = step(xs[:, t] + mixed, state)
        outputs.append(state[3])
    h = torch.stack(outputs, dim=1).to(x.dtype)
    return (h, state) if return_last_state else h
