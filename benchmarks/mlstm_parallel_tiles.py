"""Tile sweep of the fused parallel mLSTM kernels (kernels/mlstm/parallel_triton.py): whole-head or sliced, as the
head width picks (`--shape 256 4 196 192` for ViL-S's heads).

At ViL-T's cell shape by default (B=256, NH=4, S=196, DH=96, bf16, on the packed ops with the layer's GEMM-output
layout, `_inputs`): for each launch case (forward, dq, dk/dv) every candidate (rows, columns, warps, stages) is timed
on its own op (the forward op; the backward op with the other backward kernel at its pin), its outputs compared with
those of the pinned tiles, and the fastest is reported per case. Prints a table and writes JSON (results schema
of DESIGN.md).

    python -m benchmarks.mlstm_parallel_tiles [--out benchmarks/results/mlstm_parallel_tiles.json]
"""
from __future__ import annotations

import argparse
import importlib
import itertools

import torch

from benchmarks.common import graph_ms, max_rel_err, packed_layer_widths, row, write_results
from kernels.mlstm.packed_layout import unpack

# Whole-head kernels (rows, columns, warps, stages); 8 warps only for 128-row tiles: with 32 or 64 rows they were
# 1.5-4x slower than 4 warps in the session-13 sweep.
CANDIDATES = [(br, bj, 8 if br == 128 else 4, stages)
              for br, bj, stages in itertools.product((32, 64, 128), (16, 32, 64), (1, 2, 3, 4))]
# Sliced kernels (heads wider than parallel_triton.SMALL_HEAD, 384; ViL-S and ViL-B took them before session 21):
# (rows, columns, head-dim slice, output columns, warps, stages); the slices of 128 as pinned since the first sweep,
# rows / columns / stages varied.
SLICED_CANDIDATES = [(br, bj, 128, 128, 4, stages)
                     for br, bj, stages in itertools.product((32, 64), (32, 64), (1, 2, 3))]


def _inputs(B: int, NH: int, S: int, D: int, seed: int = 0):
    """The layer's two GEMM outputs as the packed cell ops read them: qk (B, S, W_qk) = [q | k | gate shares |
    padding] and v, the columns [v | gate shares | padding] of the up-projection's (B, S, W_up) output, with the
    widths of the layer (`packed_layer_widths`; 784 and 400 of 1,216 at ViL-T), forget gates mostly open; and a
    gradient of h (B, S, NH * D)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    inner, up_width, qk_width, v_width = packed_layer_widths(NH * D // 2, NH)
    qk, v = rand(B, S, qk_width), rand(B, S, up_width)[..., 2 * inner : 2 * inner + v_width]
    for fgate_share in unpack(qk, v, NH, D, D)[3][1::2]:
        fgate_share += 3.0
    return qk.bfloat16(), v.bfloat16(), rand(B, S, inner).bfloat16()


def sweep(B: int, NH: int, S: int, D: int) -> list[dict]:
    """Rows of op time (GPU ms per op from CUDA-graph replays: op times with the host in them measured its
    launches, not the tiles) and relative error per (case, candidate), on the packed ops the layer calls."""
    pt = importlib.import_module("kernels.mlstm.parallel_triton")
    qk, v, dh = _inputs(B, NH, S, D)
    inner = NH * D
    forward = lambda: pt._packed_forward(qk, v, NH, D, D, False, True, 1e-6)
    h, g, mx, alpha, gamma = forward()
    backward = lambda: pt._packed_backward(dh, qk, v, h, g, mx, alpha, gamma, NH, D, D, False)
    ops = {"fwd": (forward, lambda outs: outs[:1]), "dq": (backward, lambda outs: [outs[0][..., :inner]]),
           "dkdv": (backward, lambda outs: [outs[0][..., inner : 2 * inner], outs[1][..., :inner]])}
    shape = f"B{B}-NH{NH}-S{S}-D{D}"
    whole = pt.whole_head(D, D)
    table, candidates = (pt.whole_head_row(D), CANDIDATES) if whole else (pt.TILES, SLICED_CANDIDATES)
    rows, pinned = [], dict(table)
    for case, (op, pick) in ops.items():
        reference = [t.clone() for t in pick(op())]
        best = None
        for tiles in candidates:
            table[case] = tiles
            config = "x".join(f"{name}{value}" for name, value in zip(("BR", "BJ", "BD", "BX"), tiles[:-2]))
            config += f"/w{tiles[-2]}/s{tiles[-1]}"
            try:
                err = max_rel_err(pick(op()), reference)
                ms = graph_ms(op)
            except Exception as failure:  # noqa: BLE001 (a config that does not fit is reported, not fatal)
                print(f"{case} {config} failed: {type(failure).__name__}")
                continue
            rows.append(row("ours:triton", f"parallel:{case}:{shape}", "op_time", round(ms, 4), "ms", config=config,
                            kernels="whole-head" if whole else "sliced", max_rel_err_vs_pinned=round(err, 5),
                            pinned=tuple(tiles) == tuple(pinned[case])))
            if best is None or ms < best[1]:
                best = (config, ms)
        table[case] = pinned[case]
        print(f"{case}: fastest {best[0]} {best[1]:.4f} ms")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mlstm_parallel_tiles.json")
    parser.add_argument("--shape", nargs=4, type=int, default=[256, 4, 196, 96], metavar=("B", "NH", "S", "D"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = sweep(*args.shape)
    print(f"{'case':34s} {'config':20s} {'ms':>8s} {'err vs pin':>10s}")
    for r in sorted(rows, key=lambda r: (r["case"], r["value"])):
        print(f"{r['case']:34s} {r['config']:20s} {r['value']:8.4f} {r['max_rel_err_vs_pinned']:10.2e}"
              + ("  (pinned)" if r["pinned"] else ""))
    print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    main()
