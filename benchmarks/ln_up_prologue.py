"""Probe: the pre-up block's LayerNorm as the A-operand prologue of the layer's up-projection GEMM (inference).

ViL-T's shape by default: 256 images x 196 tokens, embedding 192 (the fp32 residual stream that autocast keeps),
up-projection to 1,216 bf16 columns (`benchmarks.common.packed_layer_widths`). A Triton kernel normalises BM rows
once and walks the output columns (the transposed weight's tiles and the output tiles through TMA on sm_90+, else
pointer loads), so the normalised rows never reach memory. Baselines in the same run: eager LayerNorm + cuBLAS linear,
cuBLAS linear alone on a bf16 input, and torch.compile of LayerNorm + linear (inductor's norm kernel + addmm).
GPU time per call from CUDA-graph replays. Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.ln_up_prologue [--out benchmarks/results/ln_up_prologue_s17.json]
"""
from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from benchmarks.common import graph_ms, packed_layer_widths, row, write_results

# (rows per program, output columns per step, warps, pipeline stages)
CANDIDATES = list(itertools.product((64, 128), (64, 128), (4, 8), (2, 3)))


@triton.jit
def _normalised_rows(X, rows, mask_r, ka, kb, K, G, BETA, eps):
    """LayerNorm of rows of X (K features as two column parts ka, kb), fp32."""
    mask_a, mask_b = mask_r[:, None] & (ka < K)[None, :], mask_r[:, None] & (kb < K)[None, :]
    xa = tl.load(X + rows[:, None] * K + ka[None, :], mask=mask_a, other=0.0).to(tl.float32)
    xb = tl.load(X + rows[:, None] * K + kb[None, :], mask=mask_b, other=0.0).to(tl.float32)
    mean = (tl.sum(xa, axis=1) + tl.sum(xb, axis=1)) / K
    ca = tl.where((ka < K)[None, :], xa - mean[:, None], 0.0)
    cb = tl.where((kb < K)[None, :], xb - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt((tl.sum(ca * ca, axis=1) + tl.sum(cb * cb, axis=1)) / K + eps)
    scale_a = tl.load(G + ka, mask=ka < K, other=0.0)[None, :] * rstd[:, None]
    scale_b = tl.load(G + kb, mask=kb < K, other=0.0)[None, :] * rstd[:, None]
    return (ca * scale_a + tl.load(BETA + ka, mask=ka < K, other=0.0)[None, :],
            cb * scale_b + tl.load(BETA + kb, mask=kb < K, other=0.0)[None, :])


@triton.jit
def _ln_linear_kernel(X, G, BETA, WT, WA_DESC, WB_DESC, BIAS, Y, Y_DESC, M, K, N, eps, TMA: tl.constexpr,
                      KA: tl.constexpr, KB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, STAGES: tl.constexpr):
    """y[rows] = layer_norm(x[rows]) @ WT + bias for BM rows, all N columns in steps of BN."""
    row0 = tl.program_id(0) * BM
    rows = row0 + tl.arange(0, BM)
    mask_r = rows < M
    rows = rows.to(tl.int64)
    ka, kb = tl.arange(0, KA), KA + tl.arange(0, KB)
    a1, a2 = _normalised_rows(X, rows, mask_r, ka, kb, K, G, BETA, eps)
    a1, a2 = a1.to(Y.dtype.element_ty), a2.to(Y.dtype.element_ty)
    for n0 in tl.range(0, N, BN, num_stages=STAGES):
        n = n0 + tl.arange(0, BN)
        mask_n = n < N
        if TMA:
            acc = tl.dot(a2, WB_DESC.load([KA, n0]), tl.dot(a1, WA_DESC.load([0, n0])))
        else:
            w1 = tl.load(WT + ka[:, None] * N + n[None, :], mask=(ka < K)[:, None] & mask_n[None, :], other=0.0)
            w2 = tl.load(WT + kb[:, None] * N + n[None, :], mask=(kb < K)[:, None] & mask_n[None, :], other=0.0)
            acc = tl.dot(a2, w2, tl.dot(a1, w1))
        acc += tl.load(BIAS + n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if TMA:
            Y_DESC.store([row0, n0], acc.to(Y.dtype.element_ty))
        else:
            tl.store(Y + rows[:, None] * N + n[None, :], acc.to(Y.dtype.element_ty),
                     mask=mask_r[:, None] & mask_n[None, :])


def _inputs(M: int, K: int, N: int):
    g = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    return (rand(M, K), 1 + 0.1 * rand(K), 0.1 * rand(K), (rand(N, K) / K**0.5).bfloat16(),
            (0.1 * rand(N)).bfloat16())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/ln_up_prologue_s17.json")
    parser.add_argument("--shape", nargs=3, type=int, default=[256, 196, 192], metavar=("B", "T", "E"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    from triton.tools.tensor_descriptor import TensorDescriptor

    B, T, K = args.shape
    M, N = B * T, packed_layer_widths(K, 4)[1]
    x, gamma, beta, w, b = _inputs(M, K, N)
    ka = max(16, triton.next_power_of_2(K) // 2)
    kb = max(16, triton.next_power_of_2(K - ka))
    if ka + kb < K:
        raise SystemExit(f"embedding {K} does not fit two power-of-two column parts")
    wt, y = w.t().contiguous(), torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
    case = f"ln_up:M{M}-K{K}-N{N}"
    rows = []
    with torch.no_grad():
        reference = lambda: F.linear(F.layer_norm(x, (K,), gamma, beta, 1e-5).bfloat16(), w, b)
        expected = reference().float()
        xb = x.bfloat16()
        compiled = torch.compile(lambda x: F.linear(F.layer_norm(x, (K,), gamma, beta, 1e-5).bfloat16(), w, b))
        compiled(x)
        for impl, fn in (("eager layer_norm + cuBLAS linear", reference), ("cuBLAS linear alone", lambda: F.linear(
                xb, w, b)), ("torch.compile layer_norm + linear", lambda: compiled(x))):
            rows.append(row(impl, case, "time", round(graph_ms(fn), 4), "ms"))
        tma_ok = torch.cuda.get_device_capability()[0] >= 9 and K % 8 == 0 and N % 8 == 0
        for tma, (bm, bn, warps, stages) in itertools.product((False, True) if tma_ok else (False,), CANDIDATES):
            descs = (TensorDescriptor(wt, [K, N], [N, 1], [ka, bn]), TensorDescriptor(wt, [K, N], [N, 1], [kb, bn]),
                     TensorDescriptor(y, [M, N], [N, 1], [bm, bn])) if tma else (wt, wt, y)
            fn = lambda: _ln_linear_kernel[(triton.cdiv(M, bm),)](
                x, gamma, beta, wt, descs[0], descs[1], b, y, descs[2], M, K, N, 1e-5, TMA=tma, KA=ka, KB=kb, BM=bm,
                BN=bn, STAGES=stages, num_warps=warps)
            try:
                y.zero_()
                fn()
                err = ((y.float() - expected).norm() / expected.norm()).item()
                ms = graph_ms(fn)
            except triton.runtime.errors.OutOfResources:
                continue
            rows.append(row("ours:triton" + ("+tma" if tma else ""), case, "time", round(ms, 4), "ms", BM=bm, BN=bn,
                            num_warps=warps, num_stages=stages, rel_err_vs_eager=round(err, 6)))
    for r in sorted(rows, key=lambda r: r["value"])[:12]:
        tiles = f" BM{r['BM']} BN{r['BN']} w{r['num_warps']} s{r['num_stages']}" if "BM" in r else ""
        print(f"{r['impl'] + tiles:50s} {r['value'] * 1e3:7.1f} us")
    print(f"wrote {write_results(args.out, rows, note=__doc__.splitlines()[0])}")


if __name__ == "__main__":
    main()
