"""Tile and token-split sweep of the grid conv's weight-gradient sums (xlstm_core/grid_conv_triton.py `_weight_grads`:
the nine tap sums and the bias sum per image, then their reduction over the batch), at ViL's shapes.

x is a strided slice of the up-projection's output (its width from the layer, `benchmarks.common.packed_layer_widths`),
du dense; 14 x 14 tokens, bf16, batch 256 (ViL-B 128). Each candidate (tokens per step, channels per program, warps,
programs per SM the token split aims at) is timed on the whole call, its reduction included (GPU us from CUDA-graph
replays), and its sums compared with the pinned config's, which is the baseline measured in the same run.
Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.grid_conv_wgrad_tiles [--sizes tiny small base]
        [--out benchmarks/results/grid_conv_wgrad_tiles.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import (
    VIL_BATCH, graph_ms, packed_layer_widths, save_sweep, settings, tile_sweep, vil_embedding_dim)
from xlstm_core import grid_conv_triton as gc

GRID = (14, 14)
CANDIDATES = list(itertools.product((4, 8, 16), (32, 64, 128), (1, 2, 4), (4, 8, 16)))


def _inputs(size: str) -> tuple[torch.Tensor, torch.Tensor]:
    inner, up_width, *_ = packed_layer_widths(vil_embedding_dim(size), 4)
    g = torch.Generator(device="cuda").manual_seed(0)
    T = GRID[0] * GRID[1]
    up = torch.randn(VIL_BATCH[size], T, up_width, device="cuda", generator=g, dtype=torch.bfloat16)
    du = torch.randn(VIL_BATCH[size], T, inner, device="cuda", generator=g, dtype=torch.bfloat16)
    return du, up[..., :inner]


def _timed(config, du, x):
    with settings(gc, WGRAD_TILES=config[:3], WGRAD_PROGRAMS_PER_SM=config[3], WIDE_WGRAD_PROGRAMS_PER_SM=config[3]):
        sums = gc._weight_grads(du, x, *GRID)
        return graph_ms(lambda: gc._weight_grads(du, x, *GRID)) * 1e3, sums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(VIL_BATCH), choices=list(VIL_BATCH))
    parser.add_argument("--out", default="benchmarks/results/grid_conv_wgrad_tiles.json")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        du, x = _inputs(size)
        wide = x.shape[-1] > gc.WIDE_WGRAD_CHANNELS
        pinned = (*gc.WGRAD_TILES, gc.WIDE_WGRAD_PROGRAMS_PER_SM if wide else gc.WGRAD_PROGRAMS_PER_SM)
        tile_sweep(f"{size} B{VIL_BATCH[size]} D{x.shape[-1]}", pinned, CANDIDATES,
                   lambda config: _timed(config, du, x), rows)
    save_sweep(args.out, rows)


if __name__ == "__main__":
    main()
