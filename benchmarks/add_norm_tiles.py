"""Tile sweep of the residual add + LayerNorm op's backward (xlstm_core/add_norm_triton.py) at ViL's residual streams.

Batch 256, 196 tokens, D = 192 / 384 (ViL-T / ViL-S; ViL-B's 768 keeps the blocks' own norms), fp32 residual, bf16 y
and output with 8 ones columns, a reversed block's flip, as the stack runs it. Each candidate (rows per step, steps
per program, warps) is timed on the whole backward op, its partial-sum reduction included (GPU us from CUDA-graph
replays), and its gradients compared with the pinned config's, which is the baseline measured in the same run.
Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.add_norm_tiles [--widths 192 384] [--out benchmarks/results/add_norm_tiles.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch

from benchmarks.common import graph_ms, save_sweep, settings, tile_sweep
from xlstm_core import add_norm_triton as an

CANDIDATES = list(itertools.product((2, 4, 8, 16), (1, 2, 4, 8, 16), (1, 2, 4)))


def _backward_args(D: int, B: int = 256, T: int = 196) -> tuple:
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape, dtype=torch.float32: torch.randn(*shape, device="cuda", generator=g).to(dtype)
    x, y, w, b = rand(B, T, D), rand(B, T, D, dtype=torch.bfloat16), rand(D), rand(D)
    x_new, out, mean, rstd = an._forward(x, y, None, w, b, 1e-6, True, False, 8, torch.bfloat16)
    return rand(*x_new.shape), rand(*out.shape, dtype=torch.bfloat16), x_new, mean, rstd, w, None, True, \
        torch.bfloat16, True, False


def _timed(D: int, tiles: tuple[int, int, int], args: tuple):
    with settings(an, TILES=tuple((bound, {**cases, "bwd": tiles} if D <= bound else cases)
                                  for bound, cases in an.TILES)):
        grads = an._backward(*args)
        return graph_ms(lambda: an._backward(*args)) * 1e3, grads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", type=int, default=[192, 384])
    parser.add_argument("--out", default="benchmarks/results/add_norm_tiles.json")
    args = parser.parse_args()
    rows = []
    for D in args.widths:
        bwd_args = _backward_args(D)
        tile_sweep(f"D{D} B256 T196", an._tiles("bwd", D), CANDIDATES, lambda tiles: _timed(D, tiles, bwd_args),
                   rows, field="tiles")
    save_sweep(args.out, rows)


if __name__ == "__main__":
    main()
