"""Probe: the whole-head cell's dk/dv kernel in Gluon with asynchronous warpgroup products, against
kernels/mlstm/parallel_triton.py's `_dkdv_head_kernel` at ViL-T's cell shape (B=256, NH=4, S=196, DH=96, bf16, the
packed layer layout). Hopper only; Gluon has no interpreter path, so this stays a measured probe, not a backend.

The Triton kernel waits for every matrix product as soon as it is issued (sm_90 TTGIR: `warp_group_dot_wait
{pendings = 0}` after each). Here the score and dP products of a step are issued together; the decayed scores P are
formed while dP runs, dV's products are issued, ds is formed while they run, dK's products run while the next rows
are stored to the other shared buffer. Same arguments and outputs as the Triton kernel (heads as two column parts,
BJ = 64 columns per program, 4 warps); dk, dv and k . dk are compared with its outputs, and both are timed from
CUDA-graph replays in the same run. Prints a table and writes JSON (results schema of DESIGN.md).

    python -m benchmarks.mlstm_gluon_dkdv [--out benchmarks/results/mlstm_gluon_dkdv.json]
"""
from __future__ import annotations

import argparse
import importlib

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, warpgroup_mma, warpgroup_mma_init,
                                                              warpgroup_mma_wait)

from benchmarks.common import graph_ms, max_rel_err, print_table, row, write_results
from benchmarks.mlstm_parallel_tiles import _inputs
from kernels.mlstm.packed_layout import unpack

ROWS_PER_STEP = (32, 16, 64)  # BR candidates; on the H100 (Triton 3.6, session 29) only 32 compiled: 64 crashed ptxas


@gluon.jit
def _load_rows(ptr, offs_r, mask_r, stride_r, D, C0: gl.constexpr, W: gl.constexpr, layout: gl.constexpr):
    """Rows offs_r, columns [C0, C0 + W) (< D) of a matrix at ptr, in `layout`; zeros outside."""
    offs_c = C0 + gl.arange(0, W, layout=gl.SliceLayout(0, layout))
    return gl.load(ptr + offs_r[:, None] * stride_r + offs_c[None, :],
                   mask=mask_r[:, None] & (offs_c < D)[None, :], other=0.0)


@gluon.jit
def dkdv_head_kernel_gluon(Q, K, V, DH, DK_OUT, DV_OUT, G, MX, ALPHA, DELTA, KDK, S, NH, DK, DV,
                           sq_b, sq_h, sq_s, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sdh_b, sdh_h, sdh_s,
                           sdk_b, sdk_h, sdk_s, sdv_b, sdv_h, sdv_s, scale,
                           BR: gl.constexpr, BJ: gl.constexpr, XA: gl.constexpr, XB: gl.constexpr):
    """dk, dv and k . dk for BJ columns s of one (image, head): sums over the rows t >= s, BR rows per step."""
    dtype: gl.constexpr = Q.dtype.element_ty
    # accumulators: (BJ, XA) and (BJ, XB) per output; scores / dP: (BJ, BR)
    la: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, XA, 16])
    lb: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, XB, 16])
    ls: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BR, 16])
    opa: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=la, k_width=2)
    opb: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=lb, k_width=2)
    ld_a: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])  # 64-wide rows
    ld_b: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # 32-wide rows
    sh_ca: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BJ, XA], dtype)
    sh_cb: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BJ, XB], dtype)
    sh_ra: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BR, XA], dtype)
    sh_rb: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BR, XB], dtype)

    bh = gl.program_id(1)
    c0 = gl.program_id(0) * BJ
    b = (bh // NH).to(gl.int64)
    hd = bh % NH
    q_ptr = Q + b * sq_b + hd * sq_h
    dh_ptr = DH + b * sdh_b + hd * sdh_h

    # this program's columns s: k and v in shared memory for the whole loop
    offs_ca = c0 + gl.arange(0, BJ, layout=gl.SliceLayout(1, ld_a))
    offs_cb = c0 + gl.arange(0, BJ, layout=gl.SliceLayout(1, ld_b))
    k1 = gl.allocate_shared_memory(dtype, [BJ, XA], sh_ca,
                                   _load_rows(K + b * sk_b + hd * sk_h, offs_ca, offs_ca < S, sk_s, DK, 0, XA, ld_a))
    k2 = gl.allocate_shared_memory(dtype, [BJ, XB], sh_cb,
                                   _load_rows(K + b * sk_b + hd * sk_h, offs_cb, offs_cb < S, sk_s, DK, XA, XB, ld_b))
    v1 = gl.allocate_shared_memory(dtype, [BJ, XA], sh_ca,
                                   _load_rows(V + b * sv_b + hd * sv_h, offs_ca, offs_ca < S, sv_s, DV, 0, XA, ld_a))
    v2 = gl.allocate_shared_memory(dtype, [BJ, XB], sh_cb,
                                   _load_rows(V + b * sv_b + hd * sv_h, offs_cb, offs_cb < S, sv_s, DV, XA, XB, ld_b))
    # rows t: q and dh, two buffers
    q1 = gl.allocate_shared_memory(dtype, [2, BR, XA], sh_ra)
    q2 = gl.allocate_shared_memory(dtype, [2, BR, XB], sh_rb)
    dh1 = gl.allocate_shared_memory(dtype, [2, BR, XA], sh_ra)
    dh2 = gl.allocate_shared_memory(dtype, [2, BR, XB], sh_rb)

    offs_c = c0 + gl.arange(0, BJ, layout=gl.SliceLayout(1, ls))
    mask_c = offs_c < S
    g_c = gl.load(G + bh * S + offs_c, mask=mask_c, other=0.0)

    t_start = c0 - c0 % BR
    offs_ra = t_start + gl.arange(0, BR, layout=gl.SliceLayout(1, ld_a))
    offs_rb = t_start + gl.arange(0, BR, layout=gl.SliceLayout(1, ld_b))
    q1.index(0).store(_load_rows(q_ptr, offs_ra, offs_ra < S, sq_s, DK, 0, XA, ld_a))
    q2.index(0).store(_load_rows(q_ptr, offs_rb, offs_rb < S, sq_s, DK, XA, XB, ld_b))
    dh1.index(0).store(_load_rows(dh_ptr, offs_ra, offs_ra < S, sdh_s, DV, 0, XA, ld_a))
    dh2.index(0).store(_load_rows(dh_ptr, offs_rb, offs_rb < S, sdh_s, DV, XA, XB, ld_b))
    fence_async_shared()

    acc_k1 = warpgroup_mma_init(gl.zeros([BJ, XA], gl.float32, la))
    acc_k2 = warpgroup_mma_init(gl.zeros([BJ, XB], gl.float32, lb))
    acc_v1 = warpgroup_mma_init(gl.zeros([BJ, XA], gl.float32, la))
    acc_v2 = warpgroup_mma_init(gl.zeros([BJ, XB], gl.float32, lb))
    # the score and dP products overwrite the previous step's registers (use_acc=False)
    s = gl.zeros([BJ, BR], gl.float32, ls)
    dp = gl.zeros([BJ, BR], gl.float32, ls)
    step = 0
    for t0 in range(t_start, S, BR):
        buf = step % 2
        s = warpgroup_mma(k1, q1.index(buf).permute((1, 0)), s, use_acc=False, is_async=True)
        s = warpgroup_mma(k2, q2.index(buf).permute((1, 0)), s, is_async=True)
        dp = warpgroup_mma(v1, dh1.index(buf).permute((1, 0)), dp, use_acc=False, is_async=True)
        dp = warpgroup_mma(v2, dh2.index(buf).permute((1, 0)), dp, is_async=True)
        # the next rows into registers while the products run
        offs_na = t0 + BR + gl.arange(0, BR, layout=gl.SliceLayout(1, ld_a))
        offs_nb = t0 + BR + gl.arange(0, BR, layout=gl.SliceLayout(1, ld_b))
        nq1 = _load_rows(q_ptr, offs_na, offs_na < S, sq_s, DK, 0, XA, ld_a)
        nq2 = _load_rows(q_ptr, offs_nb, offs_nb < S, sq_s, DK, XA, XB, ld_b)
        ndh1 = _load_rows(dh_ptr, offs_na, offs_na < S, sdh_s, DV, 0, XA, ld_a)
        ndh2 = _load_rows(dh_ptr, offs_nb, offs_nb < S, sdh_s, DV, XA, XB, ld_b)
        offs_t = t0 + gl.arange(0, BR, layout=gl.SliceLayout(0, ls))
        mask_t = offs_t < S
        mx_t = gl.load(MX + bh * S + offs_t, mask=mask_t, other=0.0)
        alpha = gl.load(ALPHA + bh * S + offs_t, mask=mask_t, other=0.0)
        delta = gl.load(DELTA + bh * S + offs_t, mask=mask_t, other=0.0)
        keep = (offs_c[:, None] <= offs_t[None, :]) & mask_c[:, None] & mask_t[None, :]
        decay = gl.where(keep, gl.exp(gl.minimum(g_c[:, None] - mx_t[None, :], 0.0)), 0.0)
        # scores done (the products issued before them too); dP may still run
        s = warpgroup_mma_wait(num_outstanding=2, deps=(s,))
        p = (s * scale * decay * alpha[None, :]).to(dtype)
        acc_v1 = warpgroup_mma(gl.convert_layout(p, opa), dh1.index(buf), acc_v1, is_async=True)
        acc_v2 = warpgroup_mma(gl.convert_layout(p, opb), dh2.index(buf), acc_v2, is_async=True)
        dp = warpgroup_mma_wait(num_outstanding=2, deps=(dp,))
        ds = ((dp * alpha[None, :] + delta[None, :]) * decay).to(dtype)
        acc_k1 = warpgroup_mma(gl.convert_layout(ds, opa), q1.index(buf), acc_k1, is_async=True)
        acc_k2 = warpgroup_mma(gl.convert_layout(ds, opb), q2.index(buf), acc_k2, is_async=True)
        # the other buffer's last readers, the previous step's products, are done
        nbuf = 1 - buf
        q1.index(nbuf).store(nq1)
        q2.index(nbuf).store(nq2)
        dh1.index(nbuf).store(ndh1)
        dh2.index(nbuf).store(ndh2)
        fence_async_shared()
        # all products done before the next step: with them in flight across the loop's back edge, ptxas serialises
        # every product of the kernel (C7515)
        acc_v1, acc_v2, acc_k1, acc_k2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc_v1, acc_v2, acc_k1, acc_k2))
        acc_v1 = warpgroup_mma_init(acc_v1)
        acc_v2 = warpgroup_mma_init(acc_v2)
        acc_k1 = warpgroup_mma_init(acc_k1)
        acc_k2 = warpgroup_mma_init(acc_k2)
        step += 1
    acc_v1, acc_v2, acc_k1, acc_k2 = warpgroup_mma_wait(num_outstanding=0, deps=(acc_v1, acc_v2, acc_k1, acc_k2))

    dk1 = acc_k1 * scale
    dk2 = acc_k2 * scale
    offs_c1 = c0 + gl.arange(0, BJ, layout=gl.SliceLayout(1, la))
    offs_c2 = c0 + gl.arange(0, BJ, layout=gl.SliceLayout(1, lb))
    cols1 = gl.arange(0, XA, layout=gl.SliceLayout(0, la))
    cols2 = XA + gl.arange(0, XB, layout=gl.SliceLayout(0, lb))
    m1 = (offs_c1 < S)[:, None] & (cols1 < DK)[None, :]
    m2 = (offs_c2 < S)[:, None] & (cols2 < DK)[None, :]
    dk_ptr = DK_OUT + b * sdk_b + hd * sdk_h
    dv_ptr = DV_OUT + b * sdv_b + hd * sdv_h
    gl.store(dk_ptr + offs_c1[:, None] * sdk_s + cols1[None, :], dk1.to(dtype), mask=m1)
    gl.store(dk_ptr + offs_c2[:, None] * sdk_s + cols2[None, :], dk2.to(dtype), mask=m2)
    gl.store(dv_ptr + offs_c1[:, None] * sdv_s + cols1[None, :], acc_v1.to(dtype), mask=m1)
    gl.store(dv_ptr + offs_c2[:, None] * sdv_s + cols2[None, :], acc_v2.to(dtype), mask=m2)
    kdk = (gl.sum(k1.load(la).to(gl.float32) * dk1, axis=1)
           + gl.convert_layout(gl.sum(k2.load(lb).to(gl.float32) * dk2, axis=1), gl.SliceLayout(1, la)))
    gl.store(KDK + bh * S + offs_c1, kdk, mask=offs_c1 < S)


def _cell_backward_inputs(B: int, NH: int, S: int, D: int):
    """The dk/dv kernels' arguments at this shape, from the Triton forward and dq kernel (which writes delta)."""
    pt = importlib.import_module("kernels.mlstm.parallel_triton")
    qk, v, dh_flat = _inputs(B, NH, S, D)
    h_flat, g, mx, alpha, gamma = pt._packed_forward(qk, v, NH, D, D, False, True, 1e-6)
    q, k, vv, _ = unpack(qk, v, NH, D, D)
    heads = lambda x: x.unflatten(-1, (NH, D)).transpose(1, 2)
    dh, h = heads(dh_flat), heads(h_flat)
    dq = pt._bsnd(q, D, q.dtype)
    delta, qdq = (torch.empty(B, NH, S, device="cuda", dtype=torch.float32) for _ in range(2))
    xa, xb = pt.head_parts(D, D)
    br, bj, warps, stages = pt._whole_head_tiles("dq", D, D)
    strides = pt._strides
    pt._dq_head_kernel[(triton.cdiv(S, br), B * NH)](
        dh, h, k, vv, dq, q, g, mx, alpha, gamma, delta, qdq, S, NH, D, D, *strides(dh), *strides(h), *strides(k),
        *strides(vv), *strides(dq), *strides(q), D**-0.5, PRECISION="tf32", BR=br, BJ=bj, XA=xa, XB=xb,
        num_warps=warps, num_stages=stages)

    def args(dk, dv, kdk):
        return (q, k, vv, dh, dk, dv, g, mx, alpha, delta, kdk, S, NH, D, D, *strides(q), *strides(k), *strides(vv),
                *strides(dh), *strides(dk), *strides(dv), D**-0.5)

    outputs = lambda: (pt._bsnd(k, D, k.dtype), pt._bsnd(vv, D, vv.dtype), torch.empty_like(qdq))
    return pt, args, outputs, (xa, xb)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/mlstm_gluon_dkdv.json")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        raise SystemExit("this benchmark needs a Hopper GPU (warpgroup products)")
    B, NH, S, D = 256, 4, 196, 96
    pt, kernel_args, outputs, (xa, xb) = _cell_backward_inputs(B, NH, S, D)
    br, bj, warps, stages = pt._whole_head_tiles("dkdv", D, D)
    reference = outputs()
    triton_op = lambda: pt._dkdv_head_kernel[(triton.cdiv(S, bj), B * NH)](
        *kernel_args(*reference), PRECISION="tf32", BR=br, BJ=bj, XA=xa, XB=xb, num_warps=warps, num_stages=stages)
    case = f"dkdv:B{B}-NH{NH}-S{S}-D{D}"
    rows = [row("ours:triton", case, "op_time", round(graph_ms(triton_op) * 1e3, 2), "us",
                config=f"BR={br} BJ={bj} {warps} warps {stages} stages")]
    for rows_per_step in ROWS_PER_STEP:
        mine = outputs()
        op = lambda: dkdv_head_kernel_gluon[(triton.cdiv(S, 64), B * NH)](
            *kernel_args(*mine), BR=rows_per_step, BJ=64, XA=xa, XB=xb, num_warps=4)
        try:
            op()
            err = max_rel_err(list(mine), list(reference))
            us = graph_ms(op) * 1e3
        except Exception as failure:  # noqa: BLE001 (a config the compiler rejects is reported, not fatal)
            print(f"BR={rows_per_step} failed: {type(failure).__name__}")
            continue
        rows.append(row("ours:gluon", case, "op_time", round(us, 2), "us", config=f"BR={rows_per_step} BJ=64 4 warps",
                        max_rel_err_vs_triton=err))
    print("wrote", write_results(args.out, rows))
    print_table(rows)


if __name__ == "__main__":
    main()
