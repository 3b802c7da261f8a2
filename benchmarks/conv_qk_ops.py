"""The grid conv + block-diagonal q/k projection (xlstm_core/conv_qk_triton.py) against the path it replaces, per ViL
block, forward and backward, in the model's layout.

Baseline measured in the same run: the Triton conv + SiLU (grid_conv_triton) followed by cuBLAS's dense GEMM over the
folded (2 D + 16, D) weight; backward: the GEMM's input gradient accumulated onto the skip's (addmm, beta = 1), its
weight gradient, the bias sum (a product with ones), the conv's SiLU backward and its weight and bias sums. Ours: the
conv + q/k kernel (storing silu'(u), as in training) and the gate-share kernel; backward: x_conv's gradient through
the stored silu'(u) in one kernel, the diagonal tiles' weight gradients in another, and the same conv weight sums.
x_inner is a strided slice of the up-projection's output (widths from the layer,
`benchmarks.common.packed_layer_widths`); batch 256 (ViL-B 128), 14 x 14 tokens, bf16; GPU ms from CUDA-graph
replays. Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.conv_qk_ops [--sizes tiny small base] [--out benchmarks/results/conv_qk_ops.json]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from benchmarks.common import (
    VIL_BATCH, graph_ms, max_rel_err, packed_layer_widths, print_table, row, vil_embedding_dim, write_results)
from xlstm_core import grid_conv_triton as gc
from xlstm_core.grid_conv_triton import _shifted

GRID, BLOCK = (14, 14), 4


@triton.jit
def _silu_grad_kernel(X, WT, BIAS, G, DU, T, H, W, D, sx_b, sx_t, BT: tl.constexpr, BD: tl.constexpr):
    """The baseline's SiLU backward (the mixer op's kernel before conv_qk_triton): du = g * silu'(u) for BT tokens
    and BD channels of one image, u = the 3 x 3 conv of X recomputed; G and DU dense (B, T, D)."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    row, col, mask_t, mask_d = t // W, t % W, t < T, d < D
    u = tl.zeros((BT, BD), dtype=tl.float32)
    for i in tl.static_range(3):
        for j in tl.static_range(3):
            w = tl.load(WT + d * 9 + i * 3 + j, mask=mask_d, other=0.0).to(tl.float32)
            u += _shifted(X, b, row, col, d, mask_t, mask_d, i - 1, j - 1, H, W, sx_b, sx_t) * w[None, :]
    u += tl.load(BIAS + d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    mask = mask_t[:, None] & mask_d[None, :]
    dense = b * T * D + t[:, None] * D + d[None, :]
    g = tl.load(G + dense, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(u)
    tl.store(DU + dense, (g * s * (1.0 + u * (1.0 - s))).to(DU.dtype.element_ty), mask=mask)


def _silu_grad(x, weight, bias, g, height, width):
    B, T, D = x.shape
    du = x.new_empty(B, T, D)
    _silu_grad_kernel[(B, triton.cdiv(T, gc.BT), triton.cdiv(D, gc.BD))](
        x, weight, bias, g, du, T, height, width, D, x.stride(0), x.stride(1), BT=gc.BT, BD=gc.BD, num_warps=gc.WARPS)
    return du


def _inputs(size: str):
    """x_inner (a slice of the up-projection's output), the conv's parameters, a folded w_qk with block-diagonal q/k
    rows in the fold's (in, out) storage, b_qk, and gradients of qk (padding columns zero) and of x_conv."""
    inner, up_width, qk_width, _ = packed_layer_widths(vil_embedding_dim(size), 4)
    B, (H, W) = VIL_BATCH[size], GRID
    g = torch.Generator(device="cuda").manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, device="cuda", generator=g)
    x = randn(B, H * W, up_width).bfloat16()[..., :inner]
    blocks = torch.arange(inner, device="cuda") // BLOCK
    mask = (blocks[:, None] == blocks[None, :]).float()
    w = 0.5 * randn(inner, qk_width)
    w[:, :inner] *= mask
    w[:, inner : 2 * inner] *= mask
    w[:, 2 * inner + 8 :] = 0.0
    d_qk = randn(B, H * W, qk_width).bfloat16()
    d_qk[..., 2 * inner + 8 :] = 0.0
    return (x, 0.3 * randn(inner, 1, 3, 3), 0.1 * randn(inner), w.t(), 0.1 * randn(qk_width), d_qk,
            randn(B, H * W, inner).bfloat16())


def measure(size: str) -> list[dict]:
    from xlstm_core import conv_qk_triton as cq

    x, conv_w, conv_b, w_qk, b_qk, d_qk, d_x_conv = _inputs(size)
    (H, W), inner = GRID, x.shape[-1]
    case = f"conv_qk:vil_{size}-B{x.shape[0]}-T{H * W}-D{inner}"

    def dense_forward():
        x_conv = gc._conv(x, conv_w, conv_b, H, W, True)
        return x_conv, F.linear(x_conv, w_qk.bfloat16(), b_qk.bfloat16())

    x_conv, qk_dense = dense_forward()
    d_all = d_x_conv.clone()  # the skip's gradient, accumulated into by the baseline's addmm

    def dense_backward():
        d2 = d_qk.flatten(0, 1)
        d_all.flatten(0, 1).addmm_(d2, w_qk.bfloat16())
        d_w = d2.t() @ x_conv.flatten(0, 1)
        d_b = (d2.new_ones(1, d2.shape[0]) @ d2).squeeze(0)
        du = _silu_grad(x, conv_w, conv_b, d_all, H, W)
        return du, gc._weight_grads(du, x, H, W), d_w, d_b

    silu_grad = torch.empty_like(x_conv)
    forward = lambda: cq.conv_qk(x, conv_w, conv_b, w_qk, b_qk, H, W, BLOCK, silu_grad)  # as in training
    backward = lambda: cq.conv_qk_backward(x, conv_w, w_qk, x_conv, silu_grad, d_qk, d_x_conv, H, W, BLOCK)
    du_dense = dense_backward()[0]
    d_all.copy_(d_x_conv)
    error = max_rel_err([forward()[1], backward()[0]], [qk_dense, du_dense])
    return [row("dense_gemm", case, "forward", round(graph_ms(dense_forward), 5), "ms"),
            row("dense_gemm", case, "backward", round(graph_ms(dense_backward), 5), "ms"),
            row("ours:triton", case, "forward", round(graph_ms(forward), 5), "ms", rel_err_vs_dense=round(error, 6)),
            row("ours:triton", case, "backward", round(graph_ms(backward), 5), "ms", rel_err_vs_dense=round(error, 6)),
            row("conv_silu_only", case, "forward", round(graph_ms(lambda: gc._conv(x, conv_w, conv_b, H, W, True)),
                                                          5), "ms")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small", "base"], choices=list(VIL_BATCH))
    parser.add_argument("--out", default="benchmarks/results/conv_qk_ops.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = [r for size in args.sizes for r in measure(size)]
    print_table(rows)
    path = write_results(args.out, rows, note=(
        "Per ViL block (batch 256, ViL-B 128; 14 x 14 tokens; bf16): the grid conv + SiLU + block-diagonal q/k + gate "
        "shares (ours: xlstm_core/conv_qk_triton) against the Triton conv + SiLU and cuBLAS's dense GEMM over the "
        "folded weight, forward and backward (see the script's docstring); rel_err_vs_dense: the larger of qk's and "
        "du's relative differences from the baseline's."))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
