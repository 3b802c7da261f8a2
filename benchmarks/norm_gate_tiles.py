"""Tile sweep of the fused norm-skip-gate chain (xlstm_core/norm_gate_triton.py), forward and backward, at a ViL layer's
shape (ViL-T's by default; `--shape 256 196 4 192` for ViL-S's heads, `128 196 4 384` for ViL-B's).

196 tokens, bf16, z a column slice of the up-projection's output (its width from the layer,
`benchmarks.common.packed_layer_widths`: 1,216 at ViL-T) and x_skip dense, as the compiled layer hands them over.
Each candidate (tokens per block, the backward's blocks per program, warps) is timed on the whole op (the backward's
with its partial-sum reduction), its outputs compared with the pinned config's; the pinned config is the baseline
measured in the same run.
Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.norm_gate_tiles [--out benchmarks/results/norm_gate_bwd_sweep.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import graph_ms, max_rel_err, packed_layer_widths, row, settings, write_results

# (tokens per block, warps) of the forward; (tokens per block, blocks per program, warps) of the backward.
CANDIDATES = {"fwd": list(itertools.product((4, 8, 16, 32), (1, 2, 4))),
              "bwd": list(itertools.product((4, 8, 16, 32), (1, 2, 4, 7, 13), (1, 2)))}


def _inputs(B: int, T: int, NH: int, DH: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    inner, up_width, *_ = packed_layer_widths(NH * DH // 2, NH)
    h, x_skip, up = rand(B, T, NH, DH).bfloat16(), rand(B, T, inner).bfloat16(), rand(B, T, up_width).bfloat16()
    params = [1 + 0.1 * rand(inner), rand(inner), 0.1 * rand(inner)]  # weight, bias, skip
    return rand(B, T, inner).bfloat16(), h, x_skip, up[..., inner : 2 * inner], params


def sweep(B: int, T: int, NH: int, DH: int, cases=("fwd", "bwd")) -> list[dict]:
    """Rows of op time (GPU ms per op from CUDA-graph replays) and relative error per candidate, for the forward and
    the backward op; the other kernel keeps its pin."""
    from xlstm_core import norm_gate_triton as ng

    dy, h, x_skip, z, (weight, bias, skip) = _inputs(B, T, NH, DH)
    ops = {"fwd": lambda: [ng._forward(h, x_skip, z, weight, bias, skip, 1e-6)],
           "bwd": lambda: ng._backward(dy, h, x_skip, z, weight, bias, skip, 1e-6)}
    shape = f"B{B}-T{T}-NH{NH}-DH{DH}"
    pinned = {case: ng.tiles(case, DH) for case in ops}
    rows = []
    for case in cases:
        op = ops[case]
        reference = [t.clone() for t in op()]
        for tile in CANDIDATES[case]:
            with settings(ng, TILES=((1 << 30, pinned | {case: tile}),)):
                err = max_rel_err(op(), reference)
                ms = graph_ms(op)
            rows.append(row("ours:triton", f"norm_gate_{case}:{shape}", f"{case}_time", round(ms, 4), "ms",
                            tile=list(tile), rel_err_vs_pinned=round(err, 7), pinned=tile == pinned[case]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/norm_gate_bwd_sweep.json")
    parser.add_argument("--cases", nargs="+", default=["fwd", "bwd"], choices=["fwd", "bwd"])
    parser.add_argument("--shape", nargs=4, type=int, default=[256, 196, 4, 96], metavar=("B", "T", "NH", "DH"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = sweep(*args.shape, cases=args.cases)
    # The results are written before the long table is printed, so that a closed pipe (`| head`) loses nothing.
    path = write_results(args.out, rows, note=(
        "norm-skip-gate chain ops (xlstm_core/norm_gate_triton._forward / _backward, the latter with its partial-sum "
        "reduction), bf16; tile: (tokens per block, warps) forward, (tokens per block, blocks per program, warps) "
        "backward; backward memory floor ~0.09 ms at ViL-T's shape."))
    print(f"{'op':>4s} {'tile':>12s} {'ms':>8s} {'err vs pin':>10s}")
    for r in sorted(rows, key=lambda r: (r["metric"], r["value"])):
        mark = "  (pinned)" if r["pinned"] else ""
        print(f"{r['metric'][:3]:>4s} {str(tuple(r['tile'])):>12s} {r['value']:8.4f} "
              f"{r['rel_err_vs_pinned']:10.2e}{mark}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
