"""Decode operators for small batches: the pieces of one post-up xLSTM block step, each with its elementwise
neighbours fused in (definitions in kernels/decode/reference.py, Triton kernels in kernels/decode/triton.py).

`linear` is [residual +] act(rmsnorm(x) W^T + b) with each part optional; `mlstm_cell` is the gate projection,
one mLSTM step, the per-head norm and the output gate of an xLSTM-7B mLSTM layer. Both are forward only.

With ``pdl=True`` the Triton kernels launch with programmatic dependent launch where the GPU and Triton support
it (`kernels.decode.triton.pdl_supported`: compute capability 9.0+): each starts while the kernel before it finishes
and reads that kernel's output only after waiting for it, so back-to-back decode kernels (a block step, a CUDA graph
of them) overlap their launch and weight fetch with the previous kernel's tail. Elsewhere the flag does nothing.
"""
from __future__ import annotations

import torch

from kernels.decode import reference
from kernels.dispatch import resolve_backend
from kernels.mlstm import VARIANTS, MLSTMState
from kernels.validation import check_mlstm_state, check_same_device, check_shape, check_tensor

ACTIVATIONS = tuple(reference.ACTIVATIONS)
MAX_BATCH = 16  # beyond this the weights are re-read per row block: a cuBLAS GEMM does better
MAX_HEAD_TILE = 16384  # the Triton cell holds a head's memory (DK x DV, padded to powers of two) in one program


def cell_fits(dk: int, dv: int) -> bool:
    """Whether the Triton `mlstm_cell` takes heads of DK x DV (e.g. 64 x 128 and 128 x 128; not 256 x 512)."""
    return (1 << (dk - 1).bit_length()) * (1 << (dv - 1).bit_length()) <= MAX_HEAD_TILE


def _check_batch(x: torch.Tensor, width: int | None, what: str) -> None:
    check_tensor("x", x, 2, f"(B, {what})")
    if width is not None:
        check_shape("x", x, (x.shape[0], width), f"(B, {what})")
    if not 1 <= x.shape[0] <= MAX_BATCH:
        raise ValueError(f"decode kernels take 1 to {MAX_BATCH} rows, got B={x.shape[0]}")


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def linear(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
           bias: torch.Tensor | None = None, activation: str | None = None, residual: torch.Tensor | None = None,
           pdl: bool = False, backend: str = "auto") -> torch.Tensor:
    """out = [residual +] act(rmsnorm(x) W^T + b) for x (B, K), B <= MAX_BATCH.

    weight: (N, K), or (2 N, K) with ``activation`` ("silu" | "gelu"), whose first N rows are the gate and last N
    rows the up projection (out = act(gate) * up); norm_weight: (K,) turns on the RMS-norm prologue with ``eps``;
    bias: (N,) or (2 N,); residual: (B, N); pdl: see the module docstring (weight is prefetched before the wait).
    Returns (B, N) in x's dtype.
    """
    check_tensor("weight", weight, 2, "(N, K)")
    _check_batch(x, weight.shape[1], "K")
    if activation not in (None, *ACTIVATIONS):
        raise ValueError(f"activation must be None or one of {ACTIVATIONS}, got {activation!r}")
    if activation is not None and weight.shape[0] % 2:
        raise ValueError(f"with an activation weight holds gate and up rows (2 N, K), got {tuple(weight.shape)}")
    n = weight.shape[0] // (1 if activation is None else 2)
    if norm_weight is not None:
        check_shape("norm_weight", norm_weight, (x.shape[1],), "(K,)")
    if bias is not None:
        check_shape("bias", bias, (weight.shape[0],), "(rows of weight,)")
    if residual is not None:
        check_shape("residual", residual, (x.shape[0], n), "(B, N)")
    check_same_device(x=x, weight=weight, norm_weight=norm_weight, bias=bias, residual=residual)
    kw = dict(norm_weight=norm_weight, eps=eps, bias=bias, activation=activation, residual=residual)
    if resolve_backend(backend, x.device, x.dtype) == "triton":
        from kernels.decode.triton import linear_triton, pdl_supported

        return linear_triton(_unit_last(x), weight.contiguous(), **kw, pdl=pdl and pdl_supported(x.device))
    return reference.linear(x, weight, **kw)


def mlstm_cell(x: torch.Tensor, qkvo: torch.Tensor, state: MLSTMState | None = None, *, num_heads: int,
               norm_weight: torch.Tensor, norm_eps: float, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
               gate_soft_cap: float | None, head_norm_weight: torch.Tensor, head_norm_eps: float,
               variant: str = "exp", eps: float = 1e-6, inplace: bool = False, pdl: bool = False,
               backend: str = "auto") -> tuple[torch.Tensor, MLSTMState]:
    """One token of an xLSTM-7B mLSTM cell: x (B, E) the block input (before its RMS norm, scale norm_weight),
    qkvo (B, 2 NH DK + 2 NH DV) the fused q, k, v, output-gate projection of the normed x; gate_weight (2 NH, E),
    gate_bias (2 NH,) the input then forget gates (soft-capped by gate_soft_cap); head_norm_weight (NH DV,) the
    per-head layer norm's scale. state: (C, n, m) as for `kernels.mlstm_step`, or None for the empty memory.

    Returns (out (B, NH DV) = sigmoid(o) * headnorm(h) in x's dtype, new state in fp32). The given state is left
    as it was, except with inplace=True on the Triton backend, which writes the new state over it (fp32, contiguous)
    and returns it, so that a CUDA graph owning the state needs no copies. The Triton backend takes heads for which
    `cell_fits(DK, DV)`. pdl: see the module docstring; the state is read before the wait, so the kernel launched
    just before this one must not write it (in a block step that kernel is the q/k/v/o projection).
    """
    _check_batch(x, None, "E")
    B, E = x.shape
    check_tensor("head_norm_weight", head_norm_weight, 1, "(NH * DV,)")
    if not isinstance(num_heads, int) or num_heads < 1 or head_norm_weight.shape[0] % num_heads:
        raise ValueError(f"num_heads must be a positive int dividing NH*DV={head_norm_weight.shape[0]}")
    dv = head_norm_weight.shape[0] // num_heads
    check_tensor("qkvo", qkvo, 2, "(B, 2 NH DK + 2 NH DV)")
    qk_width = qkvo.shape[1] - 2 * num_heads * dv
    if qkvo.shape[0] != B or qk_width <= 0 or qk_width % (2 * num_heads):
        raise ValueError(f"qkvo must be (B={B}, 2 NH DK + 2 NH DV) with NH={num_heads}, DV={dv}, got "
                         f"{tuple(qkvo.shape)}")
    check_shape("norm_weight", norm_weight, (E,), "(E,)")
    check_shape("gate_weight", gate_weight, (2 * num_heads, E), "(2 NH, E)")
    check_shape("gate_bias", gate_bias, (2 * num_heads,), "(2 NH,)")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if state is not None:
        check_mlstm_state(state, B, num_heads, qk_width // (2 * num_heads), dv)
    check_same_device(x=x, qkvo=qkvo, gate_weight=gate_weight, head_norm_weight=head_norm_weight)
    kw = dict(num_heads=num_heads, norm_weight=norm_weight, norm_eps=norm_eps, gate_weight=gate_weight,
              gate_bias=gate_bias, gate_soft_cap=gate_soft_cap, head_norm_weight=head_norm_weight,
              head_norm_eps=head_norm_eps, variant=variant, eps=eps)
    if resolve_backend(backend, x.device, x.dtype) != "triton":
        return reference.mlstm_cell(x, qkvo, state, **kw)
    from kernels.decode.triton import mlstm_cell_triton, pdl_supported

    dk = qk_width // (2 * num_heads)
    if not cell_fits(dk, dv):
        raise ValueError(f"the Triton cell takes heads with DK x DV (padded to powers of two) <= {MAX_HEAD_TILE}, got "
                         f"{dk} x {dv}; use backend='torch'")
    if state is not None and any(s.dtype != torch.float32 or not s.is_contiguous() for s in state):
        if inplace:
            raise ValueError("inplace=True needs the state (C, n, m) as contiguous fp32 tensors")
        state = tuple(s.float().contiguous() for s in state)
    return mlstm_cell_triton(_unit_last(x), _unit_last(qkvo), state, inplace=inplace,
                             pdl=pdl and pdl_supported(x.device), **{**kw, "gate_weight": gate_weight.contiguous()})


__all__ = ["ACTIVATIONS", "MAX_BATCH", "MAX_HEAD_TILE", "cell_fits", "linear", "mlstm_cell"]
