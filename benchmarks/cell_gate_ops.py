"""The mLSTM cell with the norm-gate chain as its epilogue (xlstm_core/cell_gate_triton.py, inference) against the
separate ops it replaces (the packed Triton cell, then the Triton norm-gate chain), measured in the same run, at ViL's
layer shapes.

Inputs as the layer hands them over: bf16, 196 tokens, qk dense, v / z column slices of the up-projection's output
(widths from the layer, `benchmarks.common.packed_layer_widths`), x_skip dense. GPU ms per op from CUDA-graph
replays; the outputs' relative distance from the separate ops is recorded. Shapes whose heads the op does not take
(`fuses`: ViL-S's and ViL-B's) are timed with it forced, to show why. With `--sweep`, the fused kernel's tiles (rows,
columns, warps, stages) and register cap are swept at `--sweep-size`. Prints a table and writes JSON (results schema
of DESIGN.md).

    python -m benchmarks.cell_gate_ops [--shapes T S] [--sweep] [--out benchmarks/results/cell_gate_ops.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import graph_ms, max_rel_err, packed_layer_widths, print_table, row, write_results

SHAPES = {"T": (256, 192), "S": (256, 384), "B": (128, 768)}  # ViL size: (batch, embedding dim); 4 heads, 196 tokens
SWEEP = list(itertools.product(((64, 16, 4, 3), (64, 32, 4, 3), (64, 32, 4, 2)), (None, 128, 168)))
CAPS = {"T": (128, None), "S": (None, 168), "B": (None,)}  # register caps compared per shape (128 fails at B's heads)


def _inputs(B: int, dim: int, NH: int = 4, T: int = 196):
    """qk, v, x_skip, z, weight, bias, skip as ViL's layer holds them (gates near their initial values)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    inner, up_width, qk_width, v_width = packed_layer_widths(dim, NH)
    up, qk = rand(B, T, up_width), rand(B, T, qk_width)
    for x, c in ((qk, 2 * inner), (up, 3 * inner)):
        x[..., c : c + 2 * NH] = 0.3 * x[..., c : c + 2 * NH] + torch.tensor([0.0] * NH + [1.5] * NH, device="cuda")
    up, qk = up.bfloat16(), qk.bfloat16()
    params = [1 + 0.1 * rand(inner), 0.1 * rand(inner), 1 + 0.1 * rand(inner)]  # weight, bias, skip
    x_skip = rand(B, T, inner).bfloat16()
    return qk, up[..., 2 * inner : 2 * inner + v_width], x_skip, up[..., inner : 2 * inner], params


def _ops(qk, v, x_skip, z, params, NH: int):
    """(fused op, separate ops), each returning y."""
    from kernels.mlstm.parallel_triton import packed_forward_residuals
    from xlstm_core import cell_gate_triton as cell_gate
    from xlstm_core import norm_gate_triton as norm_gate

    DH = x_skip.shape[-1] // NH

    def separate():
        h = packed_forward_residuals(qk, v, NH, DH, False)[0]
        return norm_gate._forward(h.unflatten(-1, (NH, DH)), x_skip, z, *params, 1e-6)

    return lambda: cell_gate._forward(qk, v, x_skip, z, *params, NH, False, 1e-6), separate


def compare(size: str) -> list[dict]:
    """Separate and fused op times at ViL-`size`'s shape, the fused kernel under each of CAPS[size]."""
    from xlstm_core import cell_gate_triton as cell_gate

    B, dim = SHAPES[size]
    fused, separate = _ops(*_inputs(B, dim), 4)
    label = f"ViL-{size} B{B} DH{dim * 2 // 4}"
    rows = [row("separate", label, "time", round(graph_ms(separate), 4), "ms")]
    pinned = cell_gate.MAX_REGISTERS
    try:
        for cap in CAPS[size]:
            cell_gate.MAX_REGISTERS = cap
            err, ms = max_rel_err([fused()], [separate()]), graph_ms(fused)
            rows.append(row(f"fused:cap {cap}", label, "time", round(ms, 4), "ms", max_registers=cap,
                            rel_err_vs_separate=round(err, 6)))
    finally:
        cell_gate.MAX_REGISTERS = pinned
    return rows


def sweep(size: str) -> list[dict]:
    """The fused op over SWEEP's tiles and register caps (the cell's own forward keeps its pin)."""
    from kernels.mlstm import parallel_triton as cell
    from xlstm_core import cell_gate_triton as cell_gate

    B, dim = SHAPES[size]
    fused = _ops(*_inputs(B, dim), 4)[0]
    reference = [fused()]
    pinned, pinned_registers = cell._whole_head_tiles, cell_gate.MAX_REGISTERS
    rows = []
    try:
        for tiles, registers in SWEEP:
            cell._whole_head_tiles = lambda case, dk, dv, tiles=tiles: tiles
            cell_gate.MAX_REGISTERS = registers
            try:
                err, ms = max_rel_err([fused()], reference), graph_ms(fused)
            except Exception as error:  # e.g. a register cap that ptxas cannot meet
                print(f"tiles {tiles}, cap {registers}: {type(error).__name__}")
                continue
            is_pinned = tiles == pinned("fwd", dim // 2, dim // 2) and registers == pinned_registers
            rows.append(row("fused", f"sweep:ViL-{size} B{B}", "time", round(ms, 4), "ms", tiles=tiles,
                            max_registers=registers, rel_err_vs_pinned=round(err, 7), pinned=is_pinned))
    finally:
        cell._whole_head_tiles, cell_gate.MAX_REGISTERS = pinned, pinned_registers
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["T", "S"], choices=list(SHAPES))
    parser.add_argument("--sweep", action="store_true", help="sweep the fused kernel's tiles at the first shape")
    parser.add_argument("--sweep-size", default="T", choices=list(SHAPES))
    parser.add_argument("--out", default="benchmarks/results/cell_gate_ops.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = [r for size in args.shapes for r in compare(size)]
    print_table(rows)
    if args.sweep:
        swept = sweep(args.sweep_size)
        for r in sorted(swept, key=lambda r: r["value"]):
            print(f"{str(r['tiles']):>18s} cap {r['max_registers']!s:>5s} {r['value']:8.4f} ms  "
                  f"err {r['rel_err_vs_pinned']:.1e}" + ("  (pinned)" if r["pinned"] else ""))
        rows += swept
    path = write_results(args.out, rows, note=(
        "cell + norm-gate forward for inference, fused (xlstm_core/cell_gate_triton.py, capped at max_registers per "
        "thread) against the packed Triton cell then the Triton norm-gate chain; bf16, 4 heads, 196 tokens; GPU ms "
        "per op from CUDA-graph replays."))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
