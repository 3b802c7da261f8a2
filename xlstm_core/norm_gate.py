"""The pre-up mLSTM layer's output chain: per-head layer norm of the cell output, learnable skip from the conv
branch, SiLU output gate. One function with a PyTorch reference and a fused Triton path (norm_gate_triton.py).

It is a layer op, not a sequence operator, so it lives here and not in kernels/.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from kernels.dispatch import resolve_backend
from xlstm_core.norms import multi_head_norm

# Traced for training by torch.compile, the chain's forward goes to inductor, which fuses it with its neighbours (the
# SiLU of the conv branch, the casts around the projections); the opaque Triton forward op would cut those fusions
# off. For training on the Triton backend the backward is still the fused kernel (`_TracedForwardFusedBackward`).
# Traced for inference (no gradient) the Triton op runs: in ViL-T's compiled inference step inductor formed the chain
# in two kernels (per-head statistics, then the chain: 0.017 + 0.053 ms per block on an H100), the Triton op takes
# 0.059 ms (session 16 profile, benchmarks/notes/vil_speed.md). True also sends compiled training to the Triton op.
# ViL's packed layer in training on Triton does not call this function: its fused mixer op
# (xlstm_core/mixer_triton.py) runs the Triton chain forward and backward inside.
COMPILED_USES_TRITON = False


def norm_skip_gate_reference(h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                             bias: torch.Tensor | None, skip: torch.Tensor, eps: float) -> torch.Tensor:
    """(layernorm_per_head(h) * weight [+ bias] + skip * x_skip) * silu(z), statistics in fp32.

    h: (B, T, NH, DH); x_skip, z: (B, T, NH * DH); weight, bias, skip: (NH * DH,). The result takes PyTorch's type
    promotion (fp32 for bf16 activations with fp32 parameters)."""
    normed = multi_head_norm(h, weight, "layernorm", eps)
    if bias is not None:
        normed = normed + bias
    return (normed + skip * x_skip) * F.silu(z)


class _TracedForwardFusedBackward(torch.autograd.Function):
    """Compiled training on the Triton backend: inductor fuses the forward with its neighbours, and the backward is
    the fused Triton kernel, which reads only the saved bf16 h, x_skip and z. On an H100 (compiled ViL-T step,
    batch 256) it took 53.3 ms of GPU time against 54.4 ms with the checkpointed PyTorch chain, whose backward ran as
    three inductor kernels (0.34 ms per block against the fused kernel's 0.24)."""

    @staticmethod
    def forward(ctx, h, x_skip, z, weight, bias, skip, eps):
        from xlstm_core.norm_gate_triton import kernel_layouts, setup_context

        h, z = kernel_layouts(h, z)
        setup_context(ctx, (h, x_skip, z, weight, bias, skip, eps), None)
        return norm_skip_gate_reference(h, x_skip, z, weight, bias, skip, eps).to(h.dtype)

    @staticmethod
    def backward(ctx, dy):
        from xlstm_core.norm_gate_triton import fused_backward

        return fused_backward(ctx, dy)


def norm_skip_gate(h: torch.Tensor, x_skip: torch.Tensor, z: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None, skip: torch.Tensor, *, eps: float = 1e-6,
                   backend: str = "auto") -> torch.Tensor:
    """The output chain of `norm_skip_gate_reference`, fused in one Triton kernel (forward and backward) where
    `backend` resolves to Triton and the call is not traced by torch.compile for training (see
    COMPILED_USES_TRITON). Traced for training, the forward is left to inductor, and the backward is the fused kernel
    on the Triton backend or a recomputation (activation checkpointing) on the PyTorch one; neither saves fp32
    copies of the activations.

    The fused path returns h's dtype (bf16 under autocast: the down-projection casts to it anyway)."""
    if h.dim() != 4 or x_skip.shape != z.shape or x_skip.shape != (*h.shape[:2], h.shape[2] * h.shape[3]):
        raise ValueError(f"expected h (B, T, NH, DH) and x_skip, z (B, T, NH * DH); got h {tuple(h.shape)}, "
                         f"x_skip {tuple(x_skip.shape)}, z {tuple(z.shape)}")
    features = x_skip.shape[-1]
    for name, p in (("weight", weight), ("bias", bias), ("skip", skip)):
        if p is not None and p.shape != (features,):
            raise ValueError(f"{name} must have shape ({features},), got {tuple(p.shape)}")
    fused = resolve_backend(backend, h.device, h.dtype) == "triton"
    if fused and h.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"the fused norm-skip-gate takes fp16/bf16/fp32 inputs, got {h.dtype}")
    traced_for_training = torch.compiler.is_compiling() and torch.is_grad_enabled()
    if fused and (COMPILED_USES_TRITON or not traced_for_training):
        from xlstm_core.norm_gate_triton import norm_skip_gate_triton

        return norm_skip_gate_triton(h, x_skip, z, weight, bias, skip, eps)
    if traced_for_training:
        if fused:
            return _TracedForwardFusedBackward.apply(h, x_skip, z, weight, bias, skip, eps)
        # A checkpointed region: the backward recomputes the chain from the layer's bf16 h, x_skip and z. Otherwise
        # inductor's partitioner saves the fp32 pre-gate value and an fp32 copy of z (it does not recompute through
        # long fusible chains): 8 bytes per token and feature, 154 MB per ViL-T block at batch 256.
        return checkpoint(norm_skip_gate_reference, h, x_skip, z, weight, bias, skip, eps, use_reentrant=False)
    return norm_skip_gate_reference(h, x_skip, z, weight, bias, skip, eps)


__all__ = ["norm_skip_gate", "norm_skip_gate_reference"]
