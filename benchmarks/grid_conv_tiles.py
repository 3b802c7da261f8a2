"""Tile sweep of the fused grid conv + SiLU (xlstm_core/grid_conv_triton.py, ViL inference) in the model's layout.

The kernel reads x_inner where the compiled layer leaves it: the first `inner` columns of the up-projection's output,
whose row width (e.g. 1,216 at ViL-T) is taken from the layer itself (`benchmarks.common.packed_layer_widths`), so
the sweep follows the layout if the layer changes. Batch 256 (ViL-B 128), 14 x 14 tokens, bf16. Each candidate
(tokens x channels per program, warps) is timed from CUDA-graph replays and compared with the fp32 PyTorch conv +
SiLU; measured in the same run: cuDNN's depthwise conv + SiLU (the training path) and a copy of the strided x_inner
into a dense tensor (the same bytes as the kernel reads and writes). Prints a table and writes JSON (results schema
of DESIGN.md).

    python -m benchmarks.grid_conv_tiles [--sizes tiny small base] [--out benchmarks/results/grid_conv_tiles.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F

from benchmarks.common import (
    VIL_BATCH, graph_ms, max_rel_err, packed_layer_widths, row, vil_embedding_dim, write_results)

CANDIDATES = [(bt, bd, warps) for bt, bd, warps in itertools.product((8, 16, 32), (32, 64, 128), (1, 2, 4))
              if bt * bd // (32 * warps) >= 4]  # at least 4 elements per thread
GRID = (14, 14)


def sweep(size: str) -> list[dict]:
    """Rows of kernel time (GPU ms per call) and error per candidate, plus the same-run baselines."""
    from xlstm_core import grid_conv_triton as gc

    inner, width, *_ = packed_layer_widths(vil_embedding_dim(size), 4)
    B, (H, W) = VIL_BATCH[size], GRID
    g = torch.Generator(device="cuda").manual_seed(0)
    up = torch.randn(B, H * W, width, device="cuda", generator=g).bfloat16()
    x = up[..., :inner]
    weight = 0.3 * torch.randn(inner, 1, 3, 3, device="cuda", generator=g)
    bias = 0.1 * torch.randn(inner, device="cuda", generator=g)
    as_image = lambda t: t.transpose(1, 2).reshape(B, inner, H, W)
    reference = F.silu(F.conv2d(as_image(x.float()), weight, bias, padding=1, groups=inner)).flatten(2).transpose(1, 2)
    case = f"grid_conv_silu:vil_{size}-B{B}-T{H * W}-D{inner}-row{width}"
    floor_ms = 2 * x.numel() * x.element_size() / 3.0e9  # one read and one write at 3.0 TB/s
    pinned = (gc.BT, gc.BD, gc.WARPS)
    rows = []
    for bt, bd, warps in CANDIDATES:
        gc.BT, gc.BD, gc.WARPS = bt, bd, warps
        op = lambda: gc.grid_conv_silu_triton(x, weight, bias, (H, W))
        rows.append(row("ours:triton", case, "time", round(graph_ms(op), 5), "ms", BT=bt, BD=bd, num_warps=warps,
                        rel_err=round(max_rel_err([op()], [reference]), 6), pinned=(bt, bd, warps) == pinned))
    gc.BT, gc.BD, gc.WARPS = pinned
    w16, b16, dense = weight.bfloat16(), bias.bfloat16(), x.contiguous()
    cudnn = lambda: F.silu(F.conv2d(as_image(dense), w16, b16, padding=1, groups=inner))
    rows.append(row("cudnn_conv_silu", case, "time", round(graph_ms(cudnn), 5), "ms"))
    rows.append(row("torch_strided_copy", case, "time", round(graph_ms(lambda: x.contiguous()), 5), "ms"))
    rows.append(row("memory_floor_3TBps", case, "time", round(floor_ms, 5), "ms"))
    return rows


def _print(rows: list[dict]) -> None:
    print(f"{'case':<52s} {'impl':<20s} {'tiles':>12s} {'ms':>8s} {'err':>8s}")
    for r in sorted(rows, key=lambda r: (r["case"], r["value"])):
        tiles = f"{r['BT']}x{r['BD']}/w{r['num_warps']}" if "BT" in r else ""
        err = f"{r['rel_err']:.1e}" if "rel_err" in r else ""
        mark = "  (pinned)" if r.get("pinned") else ""
        print(f"{r['case']:<52s} {r['impl']:<20s} {tiles:>12s} {r['value']:8.4f} {err:>8s}{mark}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=list(VIL_BATCH))
    parser.add_argument("--out", default="benchmarks/results/grid_conv_tiles.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = [r for size in args.sizes for r in sweep(size)]
    _print(rows)
    path = write_results(args.out, rows, note=(
        "Grid conv 3x3 + SiLU (xlstm_core/grid_conv_triton) on x_inner as a strided slice of the up-projection's "
        "output, bf16; per candidate BT tokens x BD channels per program; rel_err against the fp32 PyTorch conv + "
        "SiLU. Baselines in the same run: cuDNN depthwise conv + SiLU on a dense copy (the copy not timed), the "
        "strided copy alone, and the read + write floor at 3.0 TB/s."))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
