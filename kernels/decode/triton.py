"""Triton decode kernels for small batches (B <= 16): a block step of a post-up xLSTM stack in five launches.

At batch 1 a step reads every weight once (~0.1 ms for 150M bf16 parameters on an H100) but runs ~10 kernels per
block, so launch tails, not bytes, set its time. These kernels fold the elementwise work into the matrix-vector
products around it:
  `_linear_kernel`: [residual +] act(rmsnorm(x) W^T + b); the RMS norm is a per-row scale, so each program sums
    the squares of its rows of x (a few KB from L2) in the same pass as the product and scales at the end; the gated
    activation and the residual are the epilogue;
  `_mlstm_cell_kernel`: per (batch row, head) the gate projection (2 dot products of length E), one mLSTM step on
    the head's memory (one tile, all loads issued before the first wait), the head's layer norm and the sigmoid
    output gate.
With pdl=True (Hopper and later) both launch with programmatic dependent launch (PDL): a kernel's programs start
while the previous kernel finishes, fetch what does not depend on it (the linear's slice of W into L2 with one bulk
prefetch, the cell's recurrent state into registers), then wait for the previous grid (`gdc_wait`) before reading
its output, and only then let the next kernel start, so at most one kernel runs ahead and every earlier one is done.
Definitions in kernels/decode/reference.py. Forward only.
"""
from __future__ import annotations

import dataclasses
import functools

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpreter_enabled
from kernels.mlstm.reference import MLSTMState
from kernels.mlstm.step_triton import _gate_update

_ACTIVATIONS = {None: 0, "silu": 1, "gelu": 2}


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)  # saturates to +-1 without inf / inf


@functools.cache
def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can launch with PDL: a CUDA GPU of compute capability 9.0 or later, a Triton
    with grid dependency control, and not the interpreter."""
    if device.type != "cuda" or interpreter_enabled() or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    from triton.backends.nvidia.compiler import CUDAOptions

    gdc = triton.language.extra.cuda
    return (hasattr(gdc, "gdc_wait") and hasattr(gdc, "gdc_launch_dependents")
            and "launch_pdl" in {f.name for f in dataclasses.fields(CUDAOptions)})


def _bulk_prefetch_fits(weight: torch.Tensor) -> bool:
    """The bulk prefetch moves 16-byte aligned multiples of 16 bytes: rows (and so slices of rows) must be."""
    row_bytes = weight.stride(0) * weight.element_size()
    return row_bytes % 16 == 0 and weight.data_ptr() % 16 == 0


def _launch_options(pdl: bool) -> dict:
    """Extra launch options: none without PDL, so that a Triton without the `launch_pdl` option still launches."""
    return {"launch_pdl": True} if pdl else {}


@triton.jit
def _prefetch_l2(ptr, nbytes):
    """One thread of the program asks the copy engine to bring nbytes at ptr (16-byte aligned) into L2."""
    tl.inline_asm_elementwise(
        "{ .reg .pred first; .reg .u32 tid; mov.u32 tid, %tid.x; setp.eq.u32 first, tid, 0;\n"
        "@first cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _wait_previous_grid():
    """Block until the previous kernel is done and its writes are visible, then let the next kernel start."""
    tl.extra.cuda.gdc_wait()
    tl.extra.cuda.gdc_launch_dependents()


@triton.jit
def _mac(acc, x, w, DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc (BM, BN) += x (BM, BK) w (BN, BK)^T: on the matrix units, or as a broadcast product (rows of one)."""
    if DOT:
        return tl.dot(x.to(w.dtype), tl.trans(w), acc, input_precision=PRECISION)
    return acc + tl.sum(x[:, None, :] * w[None, :, :].to(tl.float32), axis=2)


@triton.jit
def _linear_kernel(X, NW, W, BIAS, RES, OUT, M, N, K, stride_xm, stride_wn, stride_rm, stride_om, eps,
                   NORM: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                   DOT: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_m = tl.program_id(1) * BM + tl.arange(0, BM)
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    mask_m, mask_n = offs_m < M, offs_n < N
    if PREFETCH:  # this program's rows of W (and of its up half) are contiguous: one bulk copy each into L2
        first_row = tl.program_id(0) * BN
        nbytes = tl.minimum(N - first_row, BN) * stride_wn * (W.dtype.element_ty.primitive_bitwidth // 8)
        _prefetch_l2(W + first_row * stride_wn, nbytes)
        if ACT != 0:
            _prefetch_l2(W + (N + first_row) * stride_wn, nbytes)
    if PDL:  # x and the residual are the previous kernels' outputs
        _wait_previous_grid()
    x_rows = X + offs_m[:, None] * stride_xm
    # the norm is a per-row scale: sum(x * nw * w) / rms(x), so its squares accumulate in the same pass
    squares = tl.zeros((BM, BK), dtype=tl.float32)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc_up = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        offs_k = k0 + tl.arange(0, BK)
        mask_k = offs_k < K
        w_tile = offs_n[:, None] * stride_wn + offs_k[None, :]
        w_mask = mask_n[:, None] & mask_k[None, :]
        w = tl.load(W + w_tile, mask=w_mask, other=0.0)
        if ACT != 0:  # the up half of the rows, N rows further down
            w_up = tl.load(W + N * stride_wn + w_tile, mask=w_mask, other=0.0)
        xv = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
        if NORM:
            squares += xv * xv
            xv = xv * tl.load(NW + offs_k, mask=mask_k, other=0.0).to(tl.float32)[None, :]
        acc = _mac(acc, xv, w, DOT, PRECISION)
        if ACT != 0:
            acc_up = _mac(acc_up, xv, w_up, DOT, PRECISION)
    if NORM:
        rstd = tl.rsqrt(tl.sum(squares, axis=1) / K + eps)[:, None]
        acc *= rstd
        acc_up *= rstd
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if ACT != 0:
            acc_up += tl.load(BIAS + N + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        acc = acc * tl.sigmoid(acc) * acc_up
    elif ACT == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476)) * acc_up
    out_mask = mask_m[:, None] & mask_n[None, :]
    if HAS_RES:
        acc += tl.load(RES + offs_m[:, None] * stride_rm + offs_n[None, :], mask=out_mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(OUT.dtype.element_ty), mask=out_mask)


@triton.jit
def _mlstm_cell_kernel(X, NW, WG, BG, QKVO, C, N, M, C_OUT, N_OUT, M_OUT, HNW, OUT, NH, E, DK, DV,
                       stride_xb, stride_qb, stride_ob, scale, norm_eps, cap, head_eps, eps,
                       SIG: tl.constexpr, HAS_STATE: tl.constexpr, HAS_CAP: tl.constexpr, PDL: tl.constexpr,
                       BE: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    bh = tl.program_id(0)
    b, head = bh // NH, bh % NH
    # every load that does not need the gates goes out first: the head's whole memory is one tile; the state and
    # the scale are not written by the previous kernel (a PDL launch overlaps it), q/k/v/o and x are
    offs_k, offs_v = tl.arange(0, BK), tl.arange(0, BV)
    mask_k, mask_v = offs_k < DK, offs_v < DV
    head_scale = tl.load(HNW + head * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    tile = (bh.to(tl.int64) * DK + offs_k[:, None]) * DV + offs_v[None, :]
    mask = mask_k[:, None] & mask_v[None, :]
    if HAS_STATE:
        c_old = tl.load(C + tile, mask=mask, other=0.0)
        n_old = tl.load(N + bh * DK + offs_k, mask=mask_k, other=0.0)
        m_old = tl.load(M + bh)
    elif SIG:
        m_old = 0.0
    else:
        m_old = float("-inf")
    if PDL:
        _wait_previous_grid()
    row = QKVO + b * stride_qb
    q = tl.load(row + head * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32) * scale
    k = tl.load(row + (NH + head) * DK + offs_k, mask=mask_k, other=0.0).to(tl.float32)
    v = tl.load(row + 2 * NH * DK + head * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    o = tl.load(row + 2 * NH * DK + (NH + head) * DV + offs_v, mask=mask_v, other=0.0).to(tl.float32)
    # input / forget gate of this head: rmsnorm(x) . w = (x * nw) . w / rms(x), one pass over x
    squares = tl.zeros((BE,), dtype=tl.float32)
    dot_i = tl.zeros((BE,), dtype=tl.float32)
    dot_f = tl.zeros((BE,), dtype=tl.float32)
    for e0 in range(0, E, BE):
        offs_e = e0 + tl.arange(0, BE)
        mask_e = offs_e < E
        xv = tl.load(X + b * stride_xb + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        squares += xv * xv
        xv *= tl.load(NW + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        dot_i += xv * tl.load(WG + head * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        dot_f += xv * tl.load(WG + (NH + head) * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(squares, axis=0) / E + norm_eps)
    ig = tl.sum(dot_i, axis=0) * rstd + tl.load(BG + head).to(tl.float32)
    fg = tl.sum(dot_f, axis=0) * rstd + tl.load(BG + NH + head).to(tl.float32)
    if HAS_CAP:
        ig = cap * _tanh(ig / cap)
        fg = cap * _tanh(fg / cap)
    m_new, forget, write = _gate_update(ig, fg, m_old, SIG)
    c = write * k[:, None] * v[None, :]
    n = write * k
    if HAS_STATE:
        c += forget * c_old
        n += forget * n_old
    tl.store(C_OUT + tile, c, mask=mask)
    tl.store(N_OUT + bh * DK + offs_k, n, mask=mask_k)
    tl.store(M_OUT + bh, m_new)
    num = tl.sum(q[:, None] * c, axis=0)
    qn = tl.sum(q * n, axis=0)
    if SIG:
        h = num / (tl.maximum(tl.abs(qn), 1.0) + eps)
    else:  # num / (max(|qn|, exp(-m)) + eps), scaled by exp(m) <= 1 where m < 0 so that exp(-m) never overflows
        e = tl.exp(-tl.abs(m_new))
        h = tl.where(m_new < 0, num * e / (tl.maximum(tl.abs(qn) * e, 1.0) + eps * e),
                     num / (tl.maximum(tl.abs(qn), e) + eps))
    # per-head layer norm with its scale, times sigmoid(output gate)
    mean = tl.sum(tl.where(mask_v, h, 0.0), axis=0) / DV
    centred = tl.where(mask_v, h - mean, 0.0)
    h = centred * tl.rsqrt(tl.sum(centred * centred, axis=0) / DV + head_eps) * head_scale
    tl.store(OUT + b * stride_ob + head * DV + offs_v, (tl.sigmoid(o) * h).to(OUT.dtype.element_ty), mask=mask_v)


def _config(dot: bool, bm: int, bn: int, bk: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"DOT": dot, "BM": bm, "BN": bn, "BK": bk}, num_warps=warps, num_stages=stages)


def _prune(configs, named_args, **kwargs):
    """Drop tiles wider than the reduction (they only load masked zeros)."""
    width = triton.next_power_of_2(named_args["K"])
    return [c for c in configs if c.kwargs["BK"] <= width] or configs[:1]


_KEY = ["M", "N", "K", "NORM", "ACT", "HAS_BIAS", "HAS_RES"]
# One row: few rows per program and long loads, so that every SM has a few programs whose whole slice of W is in
# flight at once (an H100 sweep at the LRAM shapes: 4 rows x 512 ran at 0.9x-1.7x cuBLAS' GEMV speed; the matrix units
# won for the 2752-long rows of the FFN's down projection). Several rows: the matrix units on 16-row blocks.
_ROW_CONFIGS = [_config(False, 1, 4, 512, 4, 2), _config(False, 1, 4, 1024, 4, 1), _config(False, 1, 8, 1024, 4, 1),
                _config(False, 1, 2, 1024, 4, 1), _config(False, 1, 2, 4096, 8, 1), _config(False, 1, 4, 2048, 8, 1),
                _config(False, 1, 4, 256, 4, 3), _config(True, 16, 16, 256, 4, 3)]
_BATCH_CONFIGS = [_config(True, 16, 32, 256, 4, 3), _config(True, 16, 16, 256, 4, 3), _config(True, 16, 16, 128, 2, 4),
                  _config(True, 16, 64, 256, 4, 3), _config(True, 16, 16, 512, 4, 2), _config(True, 16, 32, 512, 4, 2)]
_ROW_TUNER = triton.autotune(_ROW_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})(_linear_kernel)
_BATCH_TUNER = triton.autotune(_BATCH_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune})(
    _linear_kernel)


@torch.compiler.disable
def linear_triton(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None, eps: float,
                  bias: torch.Tensor | None, activation: str | None, residual: torch.Tensor | None,
                  pdl: bool) -> torch.Tensor:
    """See reference.linear; x (B, K) with unit last stride, weight (N or 2 N, K) contiguous. The tile is autotuned
    per shape on the first call (one small config under the interpreter). pdl=True (only where `pdl_supported`)
    launches with PDL and prefetches W into L2 before waiting for x."""
    m, k = x.shape
    n = weight.shape[0] // (1 if activation is None else 2)
    out = torch.empty(m, n, device=x.device, dtype=x.dtype)
    args = (x, x if norm_weight is None else norm_weight, weight, weight if bias is None else bias,
            x if residual is None else residual, out, m, n, k, x.stride(0), weight.stride(0),
            0 if residual is None else residual.stride(0), out.stride(0), eps)
    flags = dict(NORM=norm_weight is not None, ACT=_ACTIVATIONS[activation], HAS_BIAS=bias is not None,
                 HAS_RES=residual is not None, PRECISION="ieee" if weight.dtype == torch.float32 else "tf32",
                 PDL=pdl, PREFETCH=pdl and _bulk_prefetch_fits(weight))
    grid = lambda meta: (triton.cdiv(n, meta["BN"]), triton.cdiv(m, meta["BM"]))
    if interpreter_enabled():
        _linear_kernel[grid](*args, **flags, DOT=m > 1, BM=1 if m == 1 else 16, BN=16, BK=32)
    else:
        (_ROW_TUNER if m == 1 else _BATCH_TUNER)[grid](*args, **flags, **_launch_options(pdl))
    return out


@torch.compiler.disable
def mlstm_cell_triton(x: torch.Tensor, qkvo: torch.Tensor, state: MLSTMState | None, *, num_heads: int,
                      norm_weight: torch.Tensor, norm_eps: float, gate_weight: torch.Tensor, gate_bias: torch.Tensor,
                      gate_soft_cap: float | None, head_norm_weight: torch.Tensor, head_norm_eps: float,
                      variant: str, eps: float, inplace: bool, pdl: bool) -> tuple[torch.Tensor, MLSTMState]:
    """See reference.mlstm_cell; x, qkvo with unit last stride, state contiguous fp32 (or None), DK x DV within
    kernels.decode.MAX_HEAD_TILE.
    inplace=True writes the new state over the given one (each program reads its head's memory before it writes
    it), else into fresh buffers. pdl=True (only where `pdl_supported`) launches with PDL, the state loads first."""
    B, E = x.shape
    dv = head_norm_weight.shape[0] // num_heads
    dk = (qkvo.shape[1] - 2 * num_heads * dv) // (2 * num_heads)
    if inplace and state is not None:
        new_state = tuple(state)
    else:
        new_state = (torch.empty(B, num_heads, dk, dv, device=x.device, dtype=torch.float32),
                     torch.empty(B, num_heads, dk, device=x.device, dtype=torch.float32),
                     torch.empty(B, num_heads, device=x.device, dtype=torch.float32))
    c, n, m = state if state is not None else new_state
    out = torch.empty(B, num_heads * dv, device=x.device, dtype=x.dtype)
    BK, BV = triton.next_power_of_2(dk), triton.next_power_of_2(dv)
    _mlstm_cell_kernel[(B * num_heads,)](
        x, norm_weight, gate_weight, gate_bias, qkvo, c, n, m, *new_state, head_norm_weight, out, num_heads, E, dk,
        dv, x.stride(0), qkvo.stride(0), out.stride(0), dk**-0.5, norm_eps, gate_soft_cap or 1.0, head_norm_eps, eps,
        SIG=variant == "sig", HAS_STATE=state is not None, HAS_CAP=gate_soft_cap is not None, PDL=pdl,
        BE=min(triton.next_power_of_2(E), 4096), BK=BK, BV=BV, num_warps=8 if BK * BV >= 4096 else 4,
        **_launch_options(pdl))
    return out, new_state
