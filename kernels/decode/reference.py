"""Plain-PyTorch versions of the decode kernels: the obviously-correct definitions the Triton kernels are tested
against. All arithmetic runs in fp32 (fp64 for fp64 inputs) and the result is rounded once to the input dtype.

`linear`: out = [residual +] act(rmsnorm(x) W^T + b), where the RMS norm prologue (scale `norm_weight`) and the gated
activation are optional; with an activation the rows of W (and b) are two halves, gate then up, and the output is
act(gate) * up (the SwiGLU / GeGLU of a post-up block's FFN).

`mlstm_cell`: the cell half of an xLSTM-7B (post-up) mLSTM layer for one token, from the block input x and the
fused q/k/v/output-gate projection: input and forget gates from rmsnorm(x) (soft-capped), one recurrent mLSTM step,
per-head layer norm with a learnable scale, times sigmoid(output gate).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.mlstm.reference import MLSTMState, compute_dtype, mlstm_step

ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu}


def rms_normalize(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / rms(x) * weight over the last dim, in x's (compute) dtype."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * weight.to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
           bias: torch.Tensor | None = None, activation: str | None = None,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """x: (B, K), weight: (N, K) (or (2 N, K) with an activation) -> (B, N) in x's dtype; see the module docstring."""
    dt = compute_dtype(x.dtype)
    h = x.to(dt)
    if norm_weight is not None:
        h = rms_normalize(h, norm_weight, eps)
    y = h @ weight.to(dt).t()
    if bias is not None:
        y = y + bias.to(dt)
    if activation is not None:
        gate, up = y.chunk(2, dim=-1)
        y = ACTIVATIONS[activation](gate) * up
    if residual is not None:
        y = y + residual.to(dt)
    return y.to(x.dtype)


def mlstm_cell(x: torch.Tensor, qkvo: torch.Tensor, state: MLSTMState | None, *, num_heads: int,
               norm_weight: torch.Tensor, norm_eps: float, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
               gate_soft_cap: float | None, head_norm_weight: torch.Tensor, head_norm_eps: float,
               variant: str = "exp", eps: float = 1e-6) -> tuple[torch.Tensor, MLSTMState]:
    """x: (B, E); qkvo: (B, 2 NH DK + 2 NH DV) = q, k, v, output gate; gate_weight: (2 NH, E) (input gates, then
    forget gates), gate_bias: (2 NH,); head_norm_weight: (NH DV,). Returns (out (B, NH DV), new state in fp32)."""
    dt = compute_dtype(x.dtype)
    B = x.shape[0]
    dv = head_norm_weight.shape[0] // num_heads
    dk = (qkvo.shape[1] - 2 * num_heads * dv) // (2 * num_heads)
    gates = rms_normalize(x.to(dt), norm_weight, norm_eps) @ gate_weight.to(dt).t() + gate_bias.to(dt)
    if gate_soft_cap is not None:
        gates = gate_soft_cap * torch.tanh(gates / gate_soft_cap)
    igate, fgate = gates.chunk(2, dim=-1)
    q, k, v, o = qkvo.to(dt).split([num_heads * dk, num_heads * dk, num_heads * dv, num_heads * dv], dim=-1)
    h, new_state = mlstm_step(q.view(B, num_heads, dk), k.view(B, num_heads, dk), v.view(B, num_heads, dv), igate,
                              fgate, state, variant=variant, eps=eps)
    h = F.layer_norm(h, (dv,), eps=head_norm_eps).flatten(1) * head_norm_weight.to(dt)
    return (torch.sigmoid(o) * h).to(x.dtype), new_state
