"""The training kernels' partial-sum reduction (xlstm_core/column_sums_triton.py) against torch's sum, at the buffers
a ViL training step sums, with a sweep of the reduction's tiles.

The buffers' shapes are taken from the model: one eager forward + backward of each ViL size on the Triton backend
records every buffer the four backward ops (residual add + LayerNorm, norm-gate chain, grid conv, conv + q/k) hand to
`column_sums`. Each distinct shape is then timed as torch's `x.sum(-2)` (the baseline, what the ops ran before) and
as `column_sums` at every candidate (rows per step, columns per program, warps, rows a split takes at least, programs
a launch aims for), GPU time per call from CUDA-graph replays; each candidate's result is checked against torch's.
Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.column_sums [--sizes tiny small base] [--out benchmarks/results/column_sums.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import VIL_BATCH, graph_ms, row, save_sweep, settings
from xlstm_core import add_norm_triton, column_sums_triton, conv_qk_triton, grid_conv_triton, norm_gate_triton

CALLERS = (add_norm_triton, norm_gate_triton, grid_conv_triton, conv_qk_triton)
TILES = ((8, 128, 4), (16, 128, 4), (32, 128, 4), (16, 64, 2), (32, 64, 4), (8, 256, 4), (16, 256, 8))
MIN_SPLIT_ROWS = (32, 64, 128)
TARGET_PROGRAMS = (132, 264, 528)


def buffer_shapes(size: str) -> dict[tuple[int, ...], list]:
    """Shape -> [caller, calls] of the buffers one training step of `vil_<size>_patch16_224` sums."""
    import timm

    import vision  # noqa: F401  (registers the models)

    shapes: dict[tuple[int, ...], list] = {}
    originals = {m: m.column_sums for m in CALLERS}

    def recorder(module):
        def record(x):
            shapes.setdefault(tuple(x.shape), [module.__name__.split(".")[-1], 0])[1] += 1
            return originals[module](x)
        return record

    model = timm.create_model(f"vil_{size}_patch16_224", backend="triton").cuda()
    images = torch.randn(VIL_BATCH[size], 3, 224, 224, device="cuda")
    try:
        for module in CALLERS:
            module.column_sums = recorder(module)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(images).float().sum().backward()
    finally:
        for module, original in originals.items():
            module.column_sums = original
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"])
    parser.add_argument("--out", default="benchmarks/results/column_sums.json")
    args = parser.parse_args()
    cs = column_sums_triton
    pinned = (cs.TILES, cs.MIN_SPLIT_ROWS, cs.TARGET_PROGRAMS)
    rows = []
    for size in args.sizes:
        for shape, (caller, calls) in buffer_shapes(size).items():
            x = torch.randn(*shape, device="cuda")
            expected = x.sum(-2)
            case = f"{size} {caller} {'x'.join(map(str, shape))}"
            base = graph_ms(lambda: x.sum(-2)) * 1e3
            rows.append(row("torch.sum", case, "time", base, "us", calls_per_step=calls))
            best = None
            for config in itertools.product(TILES, MIN_SPLIT_ROWS, TARGET_PROGRAMS):
                with settings(cs, TILES=config[0], MIN_SPLIT_ROWS=config[1], TARGET_PROGRAMS=config[2]):
                    torch.testing.assert_close(cs.column_sums(x), expected, rtol=1e-4, atol=1e-3)
                    us = graph_ms(lambda: cs.column_sums(x)) * 1e3
                impl = "ours:triton pinned" if config == pinned else "ours:triton candidate"
                rows.append(row(impl, case, "time", us, "us", tiles=config[0], min_split_rows=config[1],
                                target_programs=config[2]))
                if best is None or us < best[0]:
                    best = (us, config)
            rows.append(row("ours:triton best", case, "time", best[0], "us", config=best[1]))
            print(f"{case} ({calls} calls per step): torch {base:.1f} us, best {best[0]:.1f} us at {best[1]}",
                  flush=True)
    save_sweep(args.out, rows)


if __name__ == "__main__":
    main()
