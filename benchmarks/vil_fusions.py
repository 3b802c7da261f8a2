"""ViL-T's inference fusions on and off in one process: GPU kernel time and images/s of its steps.

The fusions: the depthwise grid conv + SiLU as one Triton pass (`GridConv2d.conv_silu`, without autograd) and the
folded q/k/v + gate weights kept between inference steps (`mLSTMPreUpLayer._folded_weights`). "unfused" runs
PyTorch's conv + SiLU and folds the weights every step, as before them; the training step is in the table to show
it is untouched. GPU kernel time (torch.profiler, one step) is the stable measure; images/s also carries the host's
launch speed. On CUDA:

    python -m benchmarks.vil_fusions [--compile] --out benchmarks/results/vil_fusions.json
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import gpu_kernel_time, print_table, row, write_results
from vision.throughput import synthetic_steps
from xlstm_core.conv import GridConv2d
from xlstm_core.mlstm_layer import mLSTMPreUpLayer

FUSED = (GridConv2d.conv_silu, mLSTMPreUpLayer._folded_weights)
UNFUSED = (lambda self, x, grid, backend="auto": F.silu(self(x, grid)), mLSTMPreUpLayer._fold_weights)


def _measure(step: Callable[[], None], batch: int, repeats: int = 10) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    torch.cuda.synchronize()
    rate = batch * repeats / (time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    ms, launches = gpu_kernel_time(prof)
    return {"img_per_s": rate, "gpu_kernel_ms": ms, "kernel_launches": launches}


def run(compile: bool, img: int = 224, batch: int = 256) -> list[dict]:
    rows = []
    case = f"vil_tiny {img}px bs{batch}" + (" compiled" if compile else " eager")
    units = {"img_per_s": "img/s", "gpu_kernel_ms": "ms", "kernel_launches": "1"}
    for impl, (conv_silu, folded) in (("unfused", UNFUSED), ("fused", FUSED)):
        GridConv2d.conv_silu, mLSTMPreUpLayer._folded_weights = conv_silu, folded
        try:
            torch._dynamo.reset()
            steps = synthetic_steps("vil_tiny_patch16_224", None, img, batch, torch.device("cuda"), compile=compile)
            for label, step in zip(("infer", "train"), steps):
                for metric, value in _measure(step, batch).items():
                    rows.append(row(impl, case, f"{label}_{metric}", round(value, 2), units[metric]))
        finally:
            GridConv2d.conv_silu, mLSTMPreUpLayer._folded_weights = FUSED
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also measure both under torch.compile")
    parser.add_argument("--out", default="benchmarks/results/vil_fusions.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = run(compile=False)
    if args.compile:
        rows += run(compile=True)
    print_table(rows)
    print(f"wrote {write_results(args.out, rows)}")


if __name__ == "__main__":
    main()
