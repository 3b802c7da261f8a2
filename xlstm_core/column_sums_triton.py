"""Column sums of the fp32 partial-sum buffers that the training kernels' backward passes write, in Triton.

The backward kernels of the residual add + LayerNorm, the norm-gate chain, the grid conv and the conv + q/k op each
sum their parameter gradients over their own tokens in registers and write one partial row per program; the rows are
then summed here. torch's `sum` over the leading dim of these small buffers (a few MB or less) took 12-17 us per call
on an H100, ~95 GB/s: its reduction is sized for large tensors. These kernels split the rows over enough programs to
fill the GPU and, where that takes more than one program per column block, sum the split sums in a second launch, so
the result does not depend on timing (no atomics): the same inputs give the same bits.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpreter_enabled

# (rows per step, columns per program, warps), the rows a split takes at least, and the programs a launch aims for
# (four per multiprocessor of an H100): of 63 configs the one whose sum over a training step's calls is least at
# ViL-T and ViL-S, within 6% of each buffer's own best there (`python -m benchmarks.column_sums`,
# benchmarks/results/column_sums.json; GPU us per step, torch's sum -> this: ViL-T 852 -> 474, ViL-S 1,467 ->
# 1,062, ViL-B 428 -> 350). The interpreter takes small tiles so that the CPU tests cover splits, partial row steps
# and partial column blocks.
TILES, MIN_SPLIT_ROWS, TARGET_PROGRAMS = (32, 64, 4), 64, 528
INTERPRETER_TILES, INTERPRETER_MIN_SPLIT_ROWS = (4, 16, 1), 8


@triton.jit
def _column_sums_kernel(X, Y, R, C, split_rows, sx_g, sy_g, BR: tl.constexpr, BC: tl.constexpr):
    """Y[g, split, c] = sum of X[g, r, c] over the rows r of this program's split; X's rows are C apart."""
    g, split = tl.program_id(0).to(tl.int64), tl.program_id(2)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    mask_c = cols < C
    start = split * split_rows
    stop = tl.minimum(start + split_rows, R)
    acc = tl.zeros((BR, BC), dtype=tl.float32)
    for r0 in range(start, stop, BR):
        rows = r0 + tl.arange(0, BR)
        acc += tl.load(X + g * sx_g + rows[:, None].to(tl.int64) * C + cols[None, :],
                       mask=(rows < stop)[:, None] & mask_c[None, :], other=0.0)
    tl.store(Y + g * sy_g + split * C + cols, tl.sum(acc, axis=0), mask=mask_c)


def _launch(x: torch.Tensor) -> torch.Tensor:
    """(G, splits, C) sums of x (G, R, C) over splits of its rows."""
    G, R, C = x.shape
    (br, bc, warps), min_rows = ((INTERPRETER_TILES, INTERPRETER_MIN_SPLIT_ROWS) if interpreter_enabled()
                                 else (TILES, MIN_SPLIT_ROWS))
    blocks = G * triton.cdiv(C, bc)
    splits = max(1, min(triton.cdiv(TARGET_PROGRAMS, blocks), R // min_rows))
    split_rows = triton.cdiv(triton.cdiv(R, splits), br) * br
    splits = triton.cdiv(R, split_rows)
    y = x.new_empty(G, splits, C)
    _column_sums_kernel[(G, triton.cdiv(C, bc), splits)](x, y, R, C, split_rows, R * C, splits * C, BR=br, BC=bc,
                                                         num_warps=warps)
    return y


def column_sums(x: torch.Tensor) -> torch.Tensor:
    """Sums of a contiguous fp32 x over its middle dim: (G, R, C) -> (G, C), or over its rows: (R, C) -> (C,).
    Deterministic; runs where the Triton kernels run (a CUDA device, or the CPU under TRITON_INTERPRET=1)."""
    if x.dim() not in (2, 3) or x.dtype != torch.float32 or not x.is_contiguous():
        raise ValueError(f"column_sums takes a contiguous fp32 (R, C) or (G, R, C) tensor, got {x.dtype} of shape "
                         f"{tuple(x.shape)} with strides {x.stride()}")
    if x.shape[-2] == 0:
        return x.new_zeros(x.shape[:-2] + x.shape[-1:])
    y = _launch(x if x.dim() == 3 else x[None])
    while y.shape[1] > 1:
        y = _launch(y)
    return y[:, 0] if x.dim() == 3 else y[0, 0]


__all__ = ["column_sums"]
