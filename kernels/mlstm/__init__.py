"""Public mLSTM operator: validation, variable-length handling and backend dispatch.

`mlstm` runs a whole (packed) sequence; `mlstm_step` advances the recurrent state by one token; `mlstm_packed` is the
parallel form on the packed outputs of a layer's fused projections.
"""
from __future__ import annotations

import torch

from kernels.dispatch import resolve_backend
from kernels.mlstm import reference
from kernels.mlstm.packed_layout import unpack
from kernels.validation import check_mlstm_state, check_same_device, check_shape, check_tensor

VARIANTS = ("exp", "sig")
FORMS = ("chunkwise", "parallel", "recurrent")
MLSTMState = reference.MLSTMState


def _check_inputs(q, k, v, igate, fgate, variant):
    check_tensor("q", q, 4, "(B, NH, S, DHQK)")
    B, NH, S, DQK = q.shape
    check_shape("k", k, (B, NH, S, DQK), "(B, NH, S, DHQK)")
    check_tensor("v", v, 4, "(B, NH, S, DHV)")
    check_shape("v", v, (B, NH, S, v.shape[-1]), "(B, NH, S, DHV)")
    check_tensor("igate", igate, 3, "(B, NH, S)")
    check_shape("igate", igate, (B, NH, S), "(B, NH, S)")
    check_shape("fgate", fgate, (B, NH, S), "(B, NH, S)")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if S == 0:
        raise ValueError("sequence length S must be at least 1")
    check_same_device(q=q, k=k, v=v, igate=igate, fgate=fgate)


def _check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int, total: int) -> int:
    if batch != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along S and B must be 1, got B={batch}")
    if cu_seqlens.ndim != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise ValueError("cu_seqlens must be a 1-D int32/int64 tensor [0, s_1, ..., S] of length N+1 >= 2")
    bounds = cu_seqlens.tolist()
    if bounds[0] != 0 or bounds[-1] != total or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to S={total}, got {bounds}")
    return len(bounds) - 1


def _run_torch(form, q, k, v, igate, fgate, **kw):
    if form == "parallel":
        kw.pop("chunk_size")
        return reference.mlstm_parallel(q, k, v, igate, fgate, **kw)
    if form == "recurrent":
        kw.pop("chunk_size")
        return reference.mlstm_recurrent(q, k, v, igate, fgate, **kw)
    return reference.mlstm_chunkwise(q, k, v, igate, fgate, **kw)


def _run_varlen_torch(form, q, k, v, igate, fgate, cu_seqlens, initial_state, return_last_state, **kw):
    """Run each packed sequence on its own and concatenate: the reference semantics of `cu_seqlens`."""
    bounds = cu_seqlens.tolist()
    outputs, states = [], []
    for index, (start, end) in enumerate(zip(bounds, bounds[1:])):
        state = None if initial_state is None else tuple(s[index : index + 1] for s in initial_state)
        h, last = _run_torch(form, q[:, :, start:end], k[:, :, start:end], v[:, :, start:end],
                             igate[:, :, start:end], fgate[:, :, start:end], initial_state=state,
                             return_last_state=True, **kw)
        outputs.append(h)
        states.append(last)
    h = torch.cat(outputs, dim=2)
    if not return_last_state:
        return h
    return h, tuple(torch.cat(parts, dim=0) for parts in zip(*states))


def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, igate: torch.Tensor, fgate: torch.Tensor,
          variant: str = "exp", form: str = "chunkwise", chunk_size: int = 64,
          initial_state: MLSTMState | None = None, return_last_state: bool = False,
          cu_seqlens: torch.Tensor | None = None, normalize: bool = True, eps: float = 1e-6,
          backend: str = "auto"):
    """mLSTM over a sequence.

    q, k: (B, NH, S, DHQK); v: (B, NH, S, DHV); igate, fgate: (B, NH, S) pre-activations. Optional
    initial_state (C, n, m) with shapes (B, NH, DHQK, DHV), (B, NH, DHQK), (B, NH) (B = number of sequences when
    cu_seqlens packs several into one row). Returns h (B, NH, S, DHV) in the input dtype, and the last state in fp32
    when return_last_state. `normalize` affects the sig variant only (exp always normalises). On Triton the parallel
    form is a fused kernel for S <= 256 without states or cu_seqlens (kernels/mlstm/parallel_triton.py); other
    parallel-form calls run the chunkwise kernel, which computes the same function. `chunk_size` (tokens per chunk
    of the chunkwise form) takes any positive value; on an H100 at head dims 256 / 512 the Triton kernels are fastest
    at 256 (benchmarks/notes/mlstm_kernels.md), and 512 runs at about 0.6x that speed.
    """
    _check_inputs(q, k, v, igate, fgate, variant)
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, NH, S, DQK = q.shape
    n_seq = B if cu_seqlens is None else _check_cu_seqlens(cu_seqlens, B, S)
    if initial_state is not None:
        check_mlstm_state(initial_state, n_seq, NH, DQK, v.shape[-1])
    chosen = resolve_backend(backend, q.device, q.dtype)
    kw = dict(variant=variant, normalize=normalize, eps=eps, chunk_size=chunk_size)
    if chosen == "triton" and form == "parallel":
        from kernels.mlstm.parallel_triton import MAX_LEN, mlstm_parallel_triton

        if S <= MAX_LEN and initial_state is None and not return_last_state and cu_seqlens is None:
            return mlstm_parallel_triton(q, k, v, igate, fgate, variant=variant, normalize=normalize, eps=eps)
        form = "chunkwise"  # states, packed or long sequences: the chunkwise kernel computes the same function
    if chosen == "triton":
        return _run_triton(form, q, k, v, igate, fgate, cu_seqlens, initial_state, return_last_state, **kw)
    if cu_seqlens is not None:
        return _run_varlen_torch(form, q, k, v, igate, fgate, cu_seqlens, initial_state, return_last_state, **kw)
    return _run_torch(form, q, k, v, igate, fgate, initial_state=initial_state,
                      return_last_state=return_last_state, **kw)


def mlstm_packed(qk: torch.Tensor, v: torch.Tensor, *, num_heads: int, head_dim_qk: int, head_dim_v: int,
                 variant: str = "exp", normalize: bool = True, eps: float = 1e-6, backend: str = "auto"):
    """Parallel-form mLSTM (no states) on the packed outputs of two fused projections, as a layer that forms q, k,
    v and the gates with two GEMMs holds them:

    qk (B, S, W_qk): columns [q | k | igate share | fgate share | padding], q and k NH * DHQK wide (head-major), the
    shares NH wide; v (B, S, W_v): [v | igate share | fgate share | padding], v NH * DHV wide
    (kernels/mlstm/packed_layout.py). The gate pre-activations are the sums of the two shares. Returns h
    (B, S, NH, DHV).

    The same function as `mlstm(form="parallel")` on the unpacked views; on Triton (S <= 256) its backward writes the
    gradient of each packed input whole, so autograd needs no concatenation of the q / k / v / gate gradients (at
    ViL-T's shape those copies ran at ~0.13 ms per block).
    """
    check_tensor("qk", qk, 3, "(B, S, W_qk)")
    B, S, width_qk = qk.shape
    check_tensor("v", v, 3, "(B, S, W_v)")
    check_shape("v", v, (B, S, v.shape[-1]), "(B, S, W_v)")
    if min(num_heads, head_dim_qk, head_dim_v) < 1:
        raise ValueError(f"num_heads and head dims must be positive, got {num_heads}, {head_dim_qk}, {head_dim_v}")
    if width_qk < 2 * num_heads * (head_dim_qk + 1) or v.shape[-1] < num_heads * (head_dim_v + 2):
        raise ValueError(f"qk needs at least 2 * NH * (DHQK + 1) = {2 * num_heads * (head_dim_qk + 1)} columns and "
                         f"v NH * (DHV + 2) = {num_heads * (head_dim_v + 2)}, got {width_qk} and {v.shape[-1]}")
    if v.dtype != qk.dtype:
        raise ValueError(f"qk and v must share one dtype, got {qk.dtype} and {v.dtype}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if S == 0:
        raise ValueError("sequence length S must be at least 1")
    check_same_device(qk=qk, v=v)
    if resolve_backend(backend, qk.device, qk.dtype) == "triton":
        from kernels.mlstm.parallel_triton import MAX_LEN, mlstm_parallel_packed_triton

        if S <= MAX_LEN:
            return mlstm_parallel_packed_triton(qk, v, num_heads=num_heads, head_dim_qk=head_dim_qk,
                                                head_dim_v=head_dim_v, variant=variant, normalize=normalize, eps=eps)
    q, k, v_heads, (igate_qk, fgate_qk, igate_v, fgate_v) = unpack(qk, v, num_heads, head_dim_qk, head_dim_v)
    h = mlstm(q, k, v_heads, igate=igate_qk + igate_v, fgate=fgate_qk + fgate_v, variant=variant, form="parallel",
              normalize=normalize, eps=eps, backend=backend)
    return h.transpose(1, 2)


def _run_triton(form, q, k, v, igate, fgate, cu_seqlens, initial_state, return_last_state, *, variant, normalize,
                eps, chunk_size):
    if form == "chunkwise":
        from kernels.mlstm.chunkwise_triton import mlstm_chunkwise_triton

        h, last = mlstm_chunkwise_triton(q, k, v, igate, fgate, variant=variant, chunk_size=chunk_size,
                                         initial_state=initial_state, return_last_state=return_last_state,
                                         normalize=normalize, eps=eps, cu_seqlens=cu_seqlens)
        return (h, last) if return_last_state else h
    from kernels.mlstm.step_triton import mlstm_recurrent_triton

    return mlstm_recurrent_triton(q, k, v, igate, fgate, variant=variant, initial_state=initial_state,
                                  return_last_state=return_last_state, normalize=normalize, eps=eps,
                                  cu_seqlens=cu_seqlens)


def mlstm_step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, igate: torch.Tensor, fgate: torch.Tensor,
               state: MLSTMState | None = None, variant: str = "exp", normalize: bool = True, eps: float = 1e-6,
               inplace: bool = False, backend: str = "auto"):
    """One recurrent mLSTM step. q, k: (B, NH, DHQK); v: (B, NH, DHV); gates: (B, NH).

    Returns (h (B, NH, DHV), new_state). With inplace=True (Triton backend) the state buffers are overwritten, which
    keeps their addresses fixed for CUDA-graph capture; the torch backend returns new tensors.
    """
    check_tensor("q", q, 3, "(B, NH, DHQK)")
    B, NH, DQK = q.shape
    check_shape("k", k, (B, NH, DQK), "(B, NH, DHQK)")
    check_tensor("v", v, 3, "(B, NH, DHV)")
    check_shape("v", v, (B, NH, v.shape[-1]), "(B, NH, DHV)")
    check_shape("igate", igate, (B, NH), "(B, NH)")
    check_shape("fgate", fgate, (B, NH), "(B, NH)")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if state is not None:
        check_mlstm_state(state, B, NH, DQK, v.shape[-1])
    if resolve_backend(backend, q.device, q.dtype) == "triton":
        from kernels.mlstm.step_triton import mlstm_step_triton

        return mlstm_step_triton(q, k, v, igate, fgate, state, variant=variant, normalize=normalize, eps=eps,
                                 inplace=inplace)
    return reference.mlstm_step(q, k, v, igate, fgate, state, variant=variant, normalize=normalize, eps=eps)


__all__ = ["mlstm", "mlstm_packed", "mlstm_step", "MLSTMState", "VARIANTS", "FORMS"]
