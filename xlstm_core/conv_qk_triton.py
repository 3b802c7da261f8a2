"""The pre-up layer's conv branch with its block-diagonal q / k projection on Triton: grid conv + SiLU, q and k,
and the gate shares of q and k, forward (inference and training) and backward (training).

    x_conv = silu(depthwise_conv(x on an (H, W) grid) + conv_bias)
    qk = x_conv w_qk^T + b_qk,   w_qk = [W_q; W_k; W_g; zero padding]   (W_qk, D), (out, in)

W_q and W_k are block-diagonal (ViL: 4 x 4 blocks); W_g holds the gates' folded shares of q and k (2 NH rows that
read every channel). The layer otherwise runs w_qk as one dense GEMM (N = 2 D + 16, K = D): its multiply-adds grow
with D^2 (ViL-B: 3,088 x 1,536 per token), the blocks' with D. Here q and k are products of each 64-channel tile
with the 64 x 64 diagonal tile of W_q / W_k (only the block entries are read; the others are taken as zero) on the
tensor cores, in the conv's kernel; the gate shares are a skinny product over x_conv (`_gates_kernel`).

Backward (`conv_qk_backward`, used by xlstm_core/mixer_triton.py): one kernel forms x_conv's whole gradient (its
other uses' plus dq W_q + dk W_k + dg W_g) and takes it through silu'(u), which the training forward stores (one
more tensor of x_conv's size kept per layer: recomputing u from nine taps of x made this kernel 1.6x slower, session
24); another sums the diagonal tiles' weight gradients dq^T x_conv and the biases' over token ranges; the conv's own
weight gradient and input gradient are grid_conv_triton's kernels.

Measured on an H100 at batch 256 (benchmarks/conv_qk_ops.py; benchmarks/notes/vil_speed.md, session 19): forward +
backward per block 0.40 against the dense path's 0.41 ms at ViL-T, 0.77 against 0.96 at ViL-S, 0.76 against 1.37 at
ViL-B (batch 128). What the attempts before this design showed (the same session): fed straight from the conv's
arithmetic, a dot operand pulls that arithmetic into its own layout (so the forward reads its tile back), and 4 x 4
blocks as register tiles (3-D and 4-D tensors, or column gathers) were 2-7x slower than the 64 x 64 tiles on the
tensor cores.
"""
from __future__ import annotations

from itertools import accumulate

import torch
import triton
import triton.language as tl

from xlstm_core import grid_conv_triton as conv
from xlstm_core.column_sums_triton import column_sums


# (tokens, channels, warps) per program of each kernel: the conv + q / k forward, the gate shares' product (tokens,
# channels per step of the reduction, warps), the input gradient of the projections, and their weight gradients
# (tokens per step, channels, warps). The fastest of an H100 sweep at ViL-T's shape (session 19: 12 forward, 12 input-
# and 8 weight-gradient configs with 16-128 tokens, 32-64 channels, 2-8 warps; the gate kernel's 4 configs within 0.3%).
# Session 24 (the backward reads the stored silu'(u)): the input gradient's tiles are the fastest of 6 configs at
# ViL-T, -S and -B, and the training forward (which stores silu'(u)) takes TRAIN_FWD_TILES, the fastest of 32 configs
# at all three (-2 to -18 us per block against FWD_TILES, which stays the fastest without the store).
FWD_TILES, GATE_TILES, DGRAD_TILES, WGRAD_TILES = (32, 64, 2), (64, 64, 4), (128, 64, 4), (128, 64, 4)
TRAIN_FWD_TILES = (16, 64, 2)
# The weight-gradient launch splits the tokens into ranges so that it has about this many programs per SM. Session 29's
# H100 sweep of both (`python -m benchmarks.conv_qk_wgrad_tiles`, 72 configs per size) took WGRAD_TILES from
# (64, 64, 4) to (128, 64, 4) and this from 4 to 2: 63.9 / 110.2 / 116.4 against 69.6 / 120.9 / 124.7 us per call at
# ViL-T / -S / -B; ViL-T and ViL-S training +0.6% / +0.4% (benchmarks/results/vil_ab_s29.json).
WGRAD_PROGRAMS_PER_SM = 2


def _gate_block(width: int, inner: int) -> int:
    return max(16, triton.next_power_of_2(width - 2 * inner))


@triton.jit
def _tap(ptr, b, row, col, d, mask, di: tl.constexpr, dj: tl.constexpr, H, W, s_b, s_t):
    """x at the grid positions (row + di, col + dj) (zero outside the grid), fp32; row and col index the tokens
    along the tile's first dim, d the channels along its second."""
    r, c = row + di, col + dj
    ok = mask & (r >= 0) & (r < H) & (c >= 0) & (c < W)
    return tl.load(ptr + b * s_b + (r * W + c) * s_t + d, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _in_blocks(mask_d, BLOCK: tl.constexpr, BD: tl.constexpr):
    """(BD, BD): whether entry (r, c) of a diagonal tile lies in one of its BLOCK x BLOCK blocks (and in range)."""
    c = tl.arange(0, BD)
    return ((c[:, None] // BLOCK) == (c[None, :] // BLOCK)) & mask_d[:, None] & mask_d[None, :]


@triton.jit
def _diag_tile(ptr, d, mask_d, s_r, s_c, BLOCK: tl.constexpr, BD: tl.constexpr):
    """The (BD, BD) tile ptr[d[r] * s_r + d[c] * s_c] of a block-diagonal map: entries outside its BLOCK x BLOCK
    blocks are zero (and not read)."""
    return tl.load(ptr + d[:, None] * s_r + d[None, :] * s_c, mask=_in_blocks(mask_d, BLOCK, BD), other=0.0)


@triton.jit
def _conv_qk_kernel(X, CW, CB, WQK, BQK, XC, QK, DS, T, H, W, D, W_QK, sx_b, sx_t, sw_o, sw_i, K: tl.constexpr,
                    BLOCK: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, PRECISION: tl.constexpr,
                    STORE_DS: tl.constexpr):
    """x_conv, q and k for BT tokens and BD channels of one image: q = x_conv tile times the BD x BD diagonal tile of
    W_q (which holds whole blocks) on the tensor cores; with STORE_DS also silu'(u) for the backward. XC, DS (B, T,
    D) and QK (B, T, W_QK) dense."""
    b = tl.program_id(0)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    d = tl.program_id(2) * BD + tl.arange(0, BD)
    mask_t, mask_d = t < T, d < D
    mask = mask_t[:, None] & mask_d[None, :]
    row, col = (t // W)[:, None], (t % W)[:, None]
    u = tl.load(CB + d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
    for i in tl.static_range(K):
        for j in tl.static_range(K):
            w = tl.load(CW + d * (K * K) + i * K + j, mask=mask_d, other=0.0).to(tl.float32)[None, :]
            u += _tap(X, b, row, col, d[None, :], mask, i - K // 2, j - K // 2, H, W, sx_b, sx_t) * w
    s = tl.sigmoid(u)
    out = XC + (b * T + t).to(tl.int64)[:, None] * D + d[None, :]
    tl.store(out, (u * s).to(XC.dtype.element_ty), mask=mask)
    if STORE_DS:
        tl.store(DS + (b * T + t).to(tl.int64)[:, None] * D + d[None, :],
                 (s * (1.0 + u * (1.0 - s))).to(DS.dtype.element_ty), mask=mask)
    # The products read the tile back (L2) after a barrier. Fed straight from the conv's arithmetic, Triton moved that
    # arithmetic into the dot operand's layout: each of the k * k input tiles through shared memory, and the tile
    # computed by every warp (H100, ViL-T's shape: 0.98 ms against 0.05 for the conv alone).
    tl.debug_barrier()
    x = tl.load(out, mask=mask, other=0.0)
    qk = QK + (b * T + t).to(tl.int64)[:, None] * W_QK + d[None, :]
    for m in tl.static_range(2):  # q, then k
        w = _diag_tile(WQK + m * D * sw_o, d, mask_d, sw_i, sw_o, BLOCK, BD)  # (in, out)
        y = tl.dot(x, w, input_precision=PRECISION)
        y += tl.load(BQK + m * D + d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        tl.store(qk + m * D, y.to(QK.dtype.element_ty), mask=mask)


@triton.jit
def _gates_kernel(XC, WQK, BQK, QK, N, D, NG, W_QK, sw_o, sw_i, BM: tl.constexpr, BK: tl.constexpr,
                  BG: tl.constexpr, PRECISION: tl.constexpr):
    """The gate shares x_conv W_g^T + b_g of BM tokens (over all D channels, BK at a time) into QK's columns after q
    and k."""
    rows = (tl.program_id(0) * BM + tl.arange(0, BM)).to(tl.int64)
    gr = tl.arange(0, BG)
    mask_r, mask_g = rows < N, gr < NG
    acc = tl.zeros((BM, BG), dtype=tl.float32)
    for c0 in range(0, D, BK):
        c = c0 + tl.arange(0, BK)
        x = tl.load(XC + rows[:, None] * D + c[None, :], mask=mask_r[:, None] & (c < D)[None, :], other=0.0)
        w = tl.load(WQK + (2 * D + gr)[None, :] * sw_o + c[:, None] * sw_i, mask=(c < D)[:, None] & mask_g[None, :],
                    other=0.0)
        acc += tl.dot(x, w, input_precision=PRECISION)
    acc += tl.load(BQK + 2 * D + gr, mask=mask_g, other=0.0).to(tl.float32)[None, :]
    tl.store(QK + rows[:, None] * W_QK + 2 * D + gr[None, :], acc.to(QK.dtype.element_ty),
             mask=mask_r[:, None] & mask_g[None, :])


@triton.jit
def _dgrad_kernel(DQK, WQK, DXC, DS, DU, N, D, NG, W_QK, sw_o, sw_i, BLOCK: tl.constexpr, BM: tl.constexpr,
                  BD: tl.constexpr, BG: tl.constexpr, PRECISION: tl.constexpr):
    """du, the gradient of the conv's pre-activation u, for BM tokens (of any images) and BD channels: x_conv's whole
    gradient (its other uses' DXC + dq W_q + dk W_k + dg W_g, the q / k products over the BD x BD diagonal tiles)
    times silu'(u) as the forward stored it (DS)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    gr = tl.arange(0, BG)
    mask_r, mask_d, mask_g = rows < N, d < D, gr < NG
    mask = mask_r[:, None] & mask_d[None, :]
    acc = tl.load(DXC + rows.to(tl.int64)[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    grad = DQK + rows.to(tl.int64)[:, None] * W_QK
    for m in tl.static_range(2):
        dy = tl.load(grad + m * D + d[None, :], mask=mask, other=0.0)
        acc += tl.dot(dy, _diag_tile(WQK + m * D * sw_o, d, mask_d, sw_o, sw_i, BLOCK, BD).to(dy.dtype),
                      input_precision=PRECISION)
    dg = tl.load(grad + 2 * D + gr[None, :], mask=mask_r[:, None] & mask_g[None, :], other=0.0)
    w_g = tl.load(WQK + (2 * D + gr)[:, None] * sw_o + d[None, :] * sw_i, mask=mask_g[:, None] & mask_d[None, :],
                  other=0.0)
    acc += tl.dot(dg, w_g.to(dg.dtype), input_precision=PRECISION)
    ds = tl.load(DS + rows.to(tl.int64)[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DU + rows.to(tl.int64)[:, None] * D + d[None, :], (acc * ds).to(DU.dtype.element_ty), mask=mask)


@triton.jit
def _wgrad_kernel(DQK, XC, PART, N, D, NG, W_QK, SPAN, P_LEN, BLOCK: tl.constexpr, BM: tl.constexpr,
                  BD: tl.constexpr, BG: tl.constexpr, PRECISION: tl.constexpr):
    """Over SPAN tokens and BD channels, partial sums into PART[split] (fp32, P_LEN values): the q and k blocks (2,
    D, BLOCK: row o holds d W[o, s + j], s the start of o's block) from dq^T x_conv on the diagonal tile, the q and
    k bias sums (2, D), W_g's NG columns (NG, D) and, from the first channel block, the gate bias sums (NG)."""
    d = tl.program_id(0) * BD + tl.arange(0, BD)
    split = tl.program_id(1)
    gr = tl.arange(0, BG)
    mask_d, mask_g = d < D, gr < NG
    acc_q = tl.zeros((BD, BD), dtype=tl.float32)
    acc_k = tl.zeros((BD, BD), dtype=tl.float32)
    acc_g = tl.zeros((BG, BD), dtype=tl.float32)
    sum_q = tl.zeros((BD,), dtype=tl.float32)
    sum_k = tl.zeros((BD,), dtype=tl.float32)
    sum_g = tl.zeros((BG,), dtype=tl.float32)
    end = tl.minimum(N, (split + 1) * SPAN)
    for r0 in range(split * SPAN, end, BM):
        rows = (r0 + tl.arange(0, BM)).to(tl.int64)
        mask_r = rows < end
        mask = mask_r[:, None] & mask_d[None, :]
        x = tl.load(XC + rows[:, None] * D + d[None, :], mask=mask, other=0.0)
        grad = DQK + rows[:, None] * W_QK
        dq = tl.load(grad + d[None, :], mask=mask, other=0.0)
        dk = tl.load(grad + D + d[None, :], mask=mask, other=0.0)
        dg = tl.load(grad + 2 * D + gr[None, :], mask=mask_r[:, None] & mask_g[None, :], other=0.0)
        acc_q += tl.dot(tl.trans(dq), x, input_precision=PRECISION)
        acc_k += tl.dot(tl.trans(dk), x, input_precision=PRECISION)
        acc_g += tl.dot(tl.trans(dg), x, input_precision=PRECISION)
        sum_q += tl.sum(dq.to(tl.float32), axis=0)
        sum_k += tl.sum(dk.to(tl.float32), axis=0)
        sum_g += tl.sum(dg.to(tl.float32), axis=0)
    part = PART + split.to(tl.int64) * P_LEN
    keep = _in_blocks(mask_d, BLOCK, BD)
    blocks = part + d[:, None] * BLOCK + (tl.arange(0, BD)[None, :] % BLOCK)
    tl.store(blocks, acc_q, mask=keep)
    tl.store(blocks + D * BLOCK, acc_k, mask=keep)
    biases = part + 2 * D * BLOCK
    tl.store(biases + d, sum_q, mask=mask_d)
    tl.store(biases + D + d, sum_k, mask=mask_d)
    gates = biases + 2 * D
    tl.store(gates + gr[:, None] * D + d[None, :], acc_g, mask=mask_g[:, None] & mask_d[None, :])
    tl.store(gates + NG * D + gr, sum_g, mask=mask_g & (tl.program_id(0) == 0))


def _precision(dtype: torch.dtype) -> str:
    """fp32 inputs multiply in full precision (as F.linear does by default), half precision on the tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"


def takes_blocks(inner: int, block_size: int) -> bool:
    """Whether the kernels take q / k blocks of `block_size`: a power of two that divides the width `inner` and the
    kernels' channel tiles (each diagonal tile must hold whole blocks)."""
    return (block_size > 0 and block_size & (block_size - 1) == 0 and inner % block_size == 0
            and all(tiles[1] % block_size == 0 for tiles in (FWD_TILES, TRAIN_FWD_TILES, DGRAD_TILES, WGRAD_TILES)))


def _check_blocks(inner: int, block_size: int, width: int) -> None:
    if not takes_blocks(inner, block_size):
        raise ValueError(f"the fused conv + q/k projection takes q/k blocks of a power-of-two size dividing the width "
                         f"{inner}, got block size {block_size}")
    if width < 2 * inner:
        raise ValueError(f"w_qk must hold q and k ({2 * inner} rows) before the gate shares, got {width} rows")


def conv_qk(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, w_qk: torch.Tensor,
            b_qk: torch.Tensor, height: int, width: int, block_size: int,
            silu_grad: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x_conv (B, T, D) and qk (B, T, W_qk), dense and in x's dtype, from x (B, T, D; unit channel stride, any
    image and token strides), the conv's weight (D, 1, K, K) and bias, and w_qk (W_qk, D; any strides) whose q and
    k rows are block-diagonal with `block_size` blocks (entries outside the blocks are not read). In training,
    `silu_grad` (B, T, D, dense, x's dtype) receives silu'(u) of the conv's pre-activation u for the backward."""
    B, T, D = x.shape
    W_qk = w_qk.shape[0]
    _check_blocks(D, block_size, W_qk)
    if silu_grad is not None and (silu_grad.shape != (B, T, D) or silu_grad.dtype != x.dtype
                                  or not silu_grad.is_contiguous()):
        raise ValueError(f"silu_grad must be a dense ({B}, {T}, {D}) tensor of {x.dtype}, got "
                         f"{tuple(silu_grad.shape)} {silu_grad.dtype}")
    x_conv, qk = x.new_empty(B, T, D), x.new_empty(B, T, W_qk)
    w_qk = w_qk.to(x.dtype)
    bt, bd, warps = FWD_TILES if silu_grad is None else TRAIN_FWD_TILES
    _conv_qk_kernel[(B, triton.cdiv(T, bt), triton.cdiv(D, bd))](
        x, conv_weight, conv_bias, w_qk, b_qk, x_conv, qk, x_conv if silu_grad is None else silu_grad, T, height,
        width, D, W_qk, x.stride(0), x.stride(1), w_qk.stride(0), w_qk.stride(1), K=conv_weight.shape[-1],
        BLOCK=block_size, BT=bt, BD=bd, PRECISION=_precision(x.dtype), STORE_DS=silu_grad is not None,
        num_warps=warps)
    bm, bk, warps = GATE_TILES
    _gates_kernel[(triton.cdiv(B * T, bm),)](
        x_conv, w_qk, b_qk, qk, B * T, D, W_qk - 2 * D, W_qk, w_qk.stride(0), w_qk.stride(1), BM=bm, BK=bk,
        BG=_gate_block(W_qk, D), PRECISION=_precision(x.dtype), num_warps=warps)
    return x_conv, qk


def conv_qk_backward(x: torch.Tensor, conv_weight: torch.Tensor, w_qk: torch.Tensor, x_conv: torch.Tensor,
                     silu_grad: torch.Tensor, d_qk: torch.Tensor, d_x_conv: torch.Tensor, height: int, width: int,
                     block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`conv_qk`'s backward for a 3 x 3 conv, from its outputs x_conv and silu_grad and the gradients of qk (B, T,
    W_qk) and of x_conv's other uses (B, T, D): du (B, T, D) in x's dtype, the gradient of the conv's pre-activation
    (for its input gradient), and in fp32 the gradients of the conv's weight (D, 1, 3, 3) and bias, of w_qk (W_qk, D;
    zero outside q's and k's blocks) and of b_qk."""
    B, T, D = x.shape
    N, W_qk = B * T, w_qk.shape[0]
    _check_blocks(D, block_size, W_qk)
    if conv_weight.shape[-2:] != (3, 3):
        raise ValueError(f"the fused conv + q/k backward takes a 3 x 3 conv, got {tuple(conv_weight.shape[-2:])}")
    gates = W_qk - 2 * D
    x_conv, silu_grad, d_qk, d_x_conv = (t.to(x.dtype).contiguous() for t in (x_conv, silu_grad, d_qk, d_x_conv))
    w_qk, precision, bg = w_qk.to(d_qk.dtype), _precision(d_qk.dtype), _gate_block(W_qk, D)
    du = torch.empty_like(x_conv)
    bm, bd, warps = DGRAD_TILES
    _dgrad_kernel[(triton.cdiv(N, bm), triton.cdiv(D, bd))](
        d_qk, w_qk, d_x_conv, silu_grad, du, N, D, gates, W_qk, w_qk.stride(0), w_qk.stride(1), BLOCK=block_size,
        BM=bm, BD=bd, BG=bg, PRECISION=precision, num_warps=warps)
    d_w_qk, d_b_qk = _projection_grads(d_qk, x_conv, block_size)
    return du, *conv._weight_grads(du, x, height, width), d_w_qk, d_b_qk


def _projection_grads(d_qk: torch.Tensor, x_conv: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 gradients of w_qk (W_qk, D; zero outside q's and k's diagonal blocks) and of b_qk, from d_qk (B, T,
    W_qk) and x_conv (B, T, D), both contiguous in one dtype: partial sums per token range, then their sum over the
    ranges."""
    B, T, D = x_conv.shape
    N, W_qk = B * T, d_qk.shape[-1]
    gates = W_qk - 2 * D
    bm, bd, warps = WGRAD_TILES
    splits = conv._token_splits(triton.cdiv(D, bd), N, bm, x_conv.device, WGRAD_PROGRAMS_PER_SM, min_blocks=4)
    span = triton.cdiv(triton.cdiv(N, splits), bm) * bm
    offsets = list(accumulate([2 * D * block_size, 2 * D, gates * D, gates]))
    part = torch.empty(splits, offsets[-1], device=x_conv.device, dtype=torch.float32)
    _wgrad_kernel[(triton.cdiv(D, bd), splits)](
        d_qk, x_conv, part, N, D, gates, W_qk, span, offsets[-1], BLOCK=block_size, BM=bm, BD=bd,
        BG=_gate_block(W_qk, D), PRECISION=_precision(d_qk.dtype), num_warps=warps)
    blocks, qk_bias, gate_w, gate_bias = column_sums(part).tensor_split(offsets[:-1])
    d_w_qk = torch.zeros(W_qk, D, device=x_conv.device, dtype=torch.float32)
    n = D // block_size
    diagonal = torch.diagonal(d_w_qk[: 2 * D].view(2, n, block_size, n, block_size), dim1=1, dim2=3)
    diagonal.copy_(blocks.view(2, n, block_size, block_size).permute(0, 2, 3, 1))
    d_w_qk[2 * D :] = gate_w.view(gates, D)
    return d_w_qk, torch.cat([qk_bias, gate_bias])


@torch.library.custom_op("xlstm_kit::grid_conv_qk", mutates_args=())
def _forward(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, w_qk: torch.Tensor,
             b_qk: torch.Tensor, height: int, width: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`conv_qk` as an op torch.compile keeps whole. Not exported: `grid_conv_qk_triton` is the entry point."""
    return conv_qk(x, conv_weight, conv_bias, w_qk, b_qk, height, width, block_size)


@_forward.register_fake
def _(x, conv_weight, conv_bias, w_qk, b_qk, height, width, block_size):
    B, T, D = x.shape
    return x.new_empty(B, T, D), x.new_empty(B, T, w_qk.shape[0])


def grid_conv_qk_triton(x: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, w_qk: torch.Tensor,
                        b_qk: torch.Tensor, grid: tuple[int, int], block_size: int
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference (no autograd graph): x_conv = silu(conv(x)) and qk = x_conv w_qk^T + b_qk in one pass, see
    `conv_qk`. The layer checks shapes; here layouts are ensured."""
    x = x if x.stride(-1) == 1 else x.contiguous()
    return _forward(x, conv_weight.contiguous(), conv_bias.contiguous(), w_qk, b_qk.contiguous(), int(grid[0]),
                    int(grid[1]), int(block_size))


__all__ = ["conv_qk", "conv_qk_backward", "grid_conv_qk_triton", "takes_blocks"]
