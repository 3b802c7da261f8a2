"""Tile and token-split sweep of the conv + q/k op's projection gradients (xlstm_core/conv_qk_triton.py
`_projection_grads`: the diagonal blocks' weight sums, the gate shares' weights and the biases per token range, then
their reduction over the ranges), at ViL's shapes.

d_qk dense with the layer's q/k GEMM width (`benchmarks.common.packed_layer_widths`), x_conv dense; 14 x 14 tokens,
bf16, batch 256 (ViL-B 128). Each candidate (tokens per step, channels per program, warps, programs per SM the token
split aims at) is timed on the whole call, its reduction and the dense gradient's assembly included (GPU us from
CUDA-graph replays), and its sums compared with the pinned config's, which is the baseline measured in the same run.
Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.conv_qk_wgrad_tiles [--sizes tiny small base]
        [--out benchmarks/results/conv_qk_wgrad_tiles.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import (
    VIL_BATCH, graph_ms, packed_layer_widths, save_sweep, settings, tile_sweep, vil_embedding_dim)
from xlstm_core import conv_qk_triton as cq

GRID, BLOCK = (14, 14), 4
CANDIDATES = list(itertools.product((32, 64, 128), (32, 64), (2, 4, 8), (2, 4, 8, 16)))


def _inputs(size: str) -> tuple[torch.Tensor, torch.Tensor]:
    inner, _, qk_width, _ = packed_layer_widths(vil_embedding_dim(size), 4)
    g = torch.Generator(device="cuda").manual_seed(0)
    T = GRID[0] * GRID[1]
    d_qk = torch.randn(VIL_BATCH[size], T, qk_width, device="cuda", generator=g, dtype=torch.bfloat16)
    x_conv = torch.randn(VIL_BATCH[size], T, inner, device="cuda", generator=g, dtype=torch.bfloat16)
    return d_qk, x_conv


def _timed(config, d_qk, x_conv):
    with settings(cq, WGRAD_TILES=config[:3], WGRAD_PROGRAMS_PER_SM=config[3]):
        grads = cq._projection_grads(d_qk, x_conv, BLOCK)
        return graph_ms(lambda: cq._projection_grads(d_qk, x_conv, BLOCK)) * 1e3, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(VIL_BATCH), choices=list(VIL_BATCH))
    parser.add_argument("--out", default="benchmarks/results/conv_qk_wgrad_tiles.json")
    args = parser.parse_args()
    rows = []
    for size in args.sizes:
        d_qk, x_conv = _inputs(size)
        tile_sweep(f"{size} B{VIL_BATCH[size]} D{x_conv.shape[-1]}", (*cq.WGRAD_TILES, cq.WGRAD_PROGRAMS_PER_SM),
                   CANDIDATES, lambda config: _timed(config, d_qk, x_conv), rows)
    save_sweep(args.out, rows)


if __name__ == "__main__":
    main()
