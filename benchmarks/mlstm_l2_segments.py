"""Probe: is the chunkwise mLSTM forward cheaper per token when each piece's states and scores fit in L2?

65,536 tokens (NH 8, DHQK 256, DHV 512, bf16, chunk 256, no grad) as one S = 65,536 call, or as n calls of
S = 65,536 / n on distinct inputs, all captured in one CUDA graph (GPU time only), with each kernel's time from
torch.profiler. If per-segment runs were faster, the forward could be run in segments that keep the local terms,
states and scores of the previous kernel in the 50 MB L2. Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.mlstm_l2_segments [--out benchmarks/results/mlstm_l2_segments_s16.json]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks.common import graph_ms, kernel_ms, row, write_results
from kernels import mlstm

TOKENS, NH, DK, DV, CHUNK = 65536, 8, 256, 512, 256
SPLITS = (1, 4, 8, 16, 32)


def _inputs(n: int, S: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    return [(rand(1, NH, S, DK).bfloat16(), rand(1, NH, S, DK).bfloat16(), rand(1, NH, S, DV).bfloat16(),
             rand(1, NH, S).bfloat16(), (rand(1, NH, S) + 3).bfloat16()) for _ in range(n)]


def probe(variant: str, n: int) -> list[dict]:
    """Rows of the forward's GPU time and of each kernel's, for the 65,536 tokens as n calls."""
    S = TOKENS // n
    sets = _inputs(n, S)

    def forward():
        with torch.no_grad():
            for q, k, v, i, f in sets:
                mlstm(q, k, v, igate=i, fgate=f, variant=variant, chunk_size=CHUNK, backend="triton")

    case, fields = f"tok64k-{n}xS{S}", dict(variant=variant, n_calls=n, S=S, chunk_size=CHUNK)
    rows = [row("ours:triton", case, "fwd_time", round(graph_ms(forward, calls=2), 4), "ms", **fields)]
    rows += [row("ours:triton", case, "kernel_time", ms, "ms", kernel=name, **fields)
             for name, ms in kernel_ms(forward).items()]
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mlstm_l2_segments_s16.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = []
    for variant in ("sig", "exp"):
        for n in SPLITS:
            new = probe(variant, n)
            rows += new
            kernels = "  ".join(f"{r['kernel']}={r['value']}" for r in new[1:] if r["value"] > 0.01)
            print(f"{variant} {n:3d} x S={TOKENS // n:6d}: fwd {new[0]['value']:.4f} ms  {kernels}", flush=True)
            torch.cuda.empty_cache()
    print(f"wrote {write_results(args.out, rows, note=__doc__.splitlines()[0])}")


if __name__ == "__main__":
    main()
