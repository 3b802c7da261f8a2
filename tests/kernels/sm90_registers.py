"""Registers and spills of the parallel mLSTM cell's per-sequence kernels (the gate rows of the forward, the gate
gradients of the backward) at ViL-T/S/B's layer shapes, compiled ahead of time for sm_90 (an H100) on the CPU with
Triton's compiler and its ptxas: no GPU needed.

The arguments are specialised as ViL's launches specialise them (ints equal to 1 constant, 16-divisible ints and
16-byte aligned pointers marked), from the layer's packed widths; so specialised, the cell's forward compiles to the
116 registers that Nsight Compute reads on the H100. These kernels do little work and were never tuned, so a change
that makes one spill goes unseen: the gate-gradient kernel's (256, 64) tile of pointers for the up-projection's
padding spilled ~8 KB under Triton 3.6 and took 127 us per ViL-T block for a session (benchmarks/notes/vil_speed.md,
session 22).
The Triton interpreter replaces kernels by Python functions, so this runs as its own process (`python -m
tests.kernels.sm90_registers` prints {case: [registers, spill bytes]} as JSON); tests/kernels/test_register_budget.py
checks the numbers.
"""
from __future__ import annotations

import importlib
import json
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.common import packed_layer_widths
from kernels.mlstm.chunk_states_triton import pow2_block

cell = importlib.import_module("kernels.mlstm.parallel_triton")
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
SIZES = {"vil_t": (256, 192), "vil_s": (256, 384), "vil_b": (128, 768)}  # (batch, embedding dim); 4 heads
TOKENS, HEADS = 196, 4


def _gate_grad_args(batch: int, dim: int) -> tuple[dict, dict]:
    """`_packed_gate_grad_kernel`'s arguments in ViL's mixer backward (`packed_backward_into`: qk and its gradient
    dense, v and its gradient column slices of the up-projection and its gradient), and its constexprs."""
    inner, up, qk, _ = packed_layer_widths(dim, HEADS)
    head = inner // HEADS
    pad = max(qk - 2 * HEADS * (head + 1), up - 2 * inner - HEADS * (head + 2))
    args = dict(QDQ="*fp32", KDK="*fp32", QK="*bf16", V="*bf16", DQK="*bf16", DV_OUT="*bf16", S=TOKENS, NH=HEADS,
                W_QK=qk, W_V=up - 2 * inner, C_QK=2 * inner, C_V=inner, sqk_b=TOKENS * qk, sqk_s=qk,
                sv_b=TOKENS * up, sv_s=up, ROW_QK=qk, ROW_V=up)
    return args, dict(SIG=False, BS=pow2_block(TOKENS), BH=pow2_block(HEADS, low=1), BP=pow2_block(pad, low=1),
                      BT=cell.GATE_GRAD_TOKENS)


def _gate_rows_args(batch: int, dim: int) -> tuple[dict, dict]:
    """`_gate_kernel`'s arguments on the packed projections (the gate shares are columns of qk and of the
    up-projection; the forget gates' start NH columns after the input gates', so their pointers are not 16-byte
    aligned at NH = 4), and its constexprs."""
    inner, up, qk, _ = packed_layer_widths(dim, HEADS)
    args = dict(IG="*bf16", FG="*bf16:unaligned", IG2="*bf16", FG2="*bf16:unaligned", G="*fp32", MX="*fp32",
                M="*fp32", S=TOKENS, NH=HEADS)
    for share, width in (("i", qk), ("f", qk), ("i2", up), ("f2", up)):
        args.update({f"s{share}_b": TOKENS * width, f"s{share}_h": 1, f"s{share}_s": width})
    return args, dict(SIG=False, TWO_SHARES=True, BS=pow2_block(TOKENS))


def cases() -> dict[str, tuple]:
    """name -> (kernel, arguments, constexprs, num_warps)."""
    out = {}
    for size, shape in SIZES.items():
        out[f"gate_grad-{size}"] = (cell._packed_gate_grad_kernel, *_gate_grad_args(*shape), 4)
        out[f"gate_rows-{size}"] = (cell._gate_kernel, *_gate_rows_args(*shape), 4)
    return out


def registers(kernel, args: dict, constexprs: dict, num_warps: int) -> tuple[int, int]:
    """(registers per thread, spill bytes stored) of `kernel` compiled for sm_90 as a launch with `args` (ints and
    floats by value, pointers by type, ':unaligned' for a pointer that is not 16-byte aligned) would be."""
    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args.get(name)
        if name in constexprs:
            signature[name] = "constexpr"
        elif isinstance(value, str):
            signature[name] = value.split(":")[0]
            if not value.endswith(":unaligned"):
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[name] = "fp32"
        elif value == 1:
            signature[name], constexprs[name] = "constexpr", 1
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs),
                              target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps))
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        run = subprocess.run([str(PTXAS), "-arch=sm_90a", "-v", str(ptx), "-o", str(Path(tmp) / "kernel.cubin")],
                             capture_output=True, text=True, check=True)
    used = re.search(r"Used (\d+) registers", run.stderr)
    spills = re.search(r"(\d+) bytes spill stores", run.stderr)
    return int(used.group(1)), int(spills.group(1)) if spills else 0


if __name__ == "__main__":
    print(json.dumps({name: registers(*case) for name, case in cases().items()}))
