"""The pre-up mLSTM layer's middle (ViL: 3 x 3 grid conv, block-diagonal q/k, packed cell, norm-gate chain) in
training on the Triton backend, as one autograd op from the up-projection's output to the gated cell output:

    [x_inner | z | v | gate shares | padding] = up
    x_conv = silu(conv3x3(x_inner)),  qk = x_conv w_qk^T + b_qk,  h = mLSTM(qk, v)
    y = (layernorm_per_head(h) * w [+ b] + skip * x_conv) * silu(z)

Built from separate ops, the backward's gradients of up's three pieces (x_inner's from the conv, z's from the
norm-gate, v's from the cell) came out as three tensors that one more pass assembled into up's gradient (76 us per
ViL-T block on an H100, 1,216 columns at batch 256). Here each backward kernel writes its columns of up's gradient
in place. The conv, its SiLU, the block-diagonal q/k projection and the gates' shares run on
xlstm_core/conv_qk_triton.py's kernels (no dense q/k GEMM; the forward keeps silu'(u) of the conv's pre-activation for
the backward). The other kernels are those of the separate ops (grid_conv_triton,
kernels.mlstm.parallel_triton, norm_gate_triton).
"""
from __future__ import annotations

import torch

from kernels.mlstm.parallel_triton import packed_backward_into, packed_forward_residuals
from xlstm_core import grid_conv_triton as conv
from xlstm_core import norm_gate_triton as norm_gate
from xlstm_core.conv_qk_triton import conv_qk, conv_qk_backward


def _pieces(up: torch.Tensor, inner: int, v_width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return up[..., :inner], up[..., inner : 2 * inner], up[..., 2 * inner : 2 * inner + v_width]


@torch.library.custom_op("xlstm_kit::mixer_fwd", mutates_args=())
def _forward(up: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, w_qk: torch.Tensor,
             b_qk: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor | None, skip: torch.Tensor,
             height: int, width: int, block_size: int, num_heads: int, v_width: int, sig: bool, eps: float
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                        torch.Tensor, torch.Tensor, torch.Tensor]:
    """y (B, T, inner) and what the backward reads: x_conv, silu'(u) of the conv, qk, h (B, T, ...) and the cell's
    fp32 rows g, mx, alpha, gamma. Not exported: `mixer_triton` is the entry point."""
    inner = conv_weight.shape[0]
    x_inner, z, v = _pieces(up, inner, v_width)
    silu_grad = up.new_empty(*up.shape[:2], inner)
    x_conv, qk = conv_qk(x_inner, conv_weight, conv_bias, w_qk, b_qk, height, width, block_size, silu_grad)
    h, *rows = packed_forward_residuals(qk, v, num_heads, inner // num_heads, sig)
    y = norm_gate._forward(h.unflatten(-1, (num_heads, -1)), x_conv, z, norm_weight, norm_bias, skip, eps)
    return y, x_conv, silu_grad, qk, h, *rows


@_forward.register_fake
def _(up, conv_weight, conv_bias, w_qk, b_qk, norm_weight, norm_bias, skip, height, width, block_size, num_heads,
      v_width, sig, eps):
    B, T = up.shape[:2]
    inner = conv_weight.shape[0]
    row = lambda: up.new_empty(B, num_heads, T, dtype=torch.float32)
    return (up.new_empty(B, T, inner), up.new_empty(B, T, inner), up.new_empty(B, T, inner),
            up.new_empty(B, T, w_qk.shape[0]), up.new_empty(B, T, inner), row(), row(), row(), row())


@torch.library.custom_op("xlstm_kit::mixer_bwd", mutates_args=())
def _backward(dy: torch.Tensor, up: torch.Tensor, conv_weight: torch.Tensor, w_qk: torch.Tensor,
              norm_weight: torch.Tensor, norm_bias: torch.Tensor | None, skip: torch.Tensor, x_conv: torch.Tensor,
              silu_grad: torch.Tensor, qk: torch.Tensor, h: torch.Tensor, g: torch.Tensor, mx: torch.Tensor,
              alpha: torch.Tensor, gamma: torch.Tensor, height: int, width: int, block_size: int, num_heads: int,
              v_width: int, sig: bool, eps: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """d up (written whole, padding columns zero), and in fp32 the gradients of the conv's weight and bias, of w_qk
    (zero outside q's and k's blocks) and b_qk, and the norm-gate's parameter gradients stacked (3, inner) as
    weight, skip, bias."""
    inner, head_dim = conv_weight.shape[0], conv_weight.shape[0] // num_heads
    d_up = torch.empty_like(up, memory_format=torch.contiguous_format)
    x_inner, z, v = _pieces(up, inner, v_width)
    d_inner, d_z, d_v = _pieces(d_up, inner, up.shape[-1] - 2 * inner)  # the cell zeroes d_v's padding columns
    dh, d_conv_out, d_norm = norm_gate.backward_into(dy, h.unflatten(-1, (num_heads, head_dim)), x_conv, z,
                                                     norm_weight, norm_bias, skip, eps, d_z)
    d_qk = torch.empty_like(qk)
    packed_backward_into(dh.flatten(2), qk, v, h, g, mx, alpha, gamma, num_heads, head_dim, head_dim, sig, d_qk, d_v)
    du, *param_grads = conv_qk_backward(x_inner, conv_weight, w_qk, x_conv, silu_grad, d_qk, d_conv_out, height,
                                        width, block_size)
    conv._dgrad_into(du, conv_weight, height, width, d_inner)
    return d_up, *param_grads, d_norm


@_backward.register_fake
def _(dy, up, conv_weight, w_qk, norm_weight, norm_bias, skip, x_conv, silu_grad, qk, h, g, mx, alpha, gamma, height,
      width, block_size, num_heads, v_width, sig, eps):
    inner = conv_weight.shape[0]
    fp32 = lambda *shape: up.new_empty(*shape, dtype=torch.float32)
    return (torch.empty_like(up, memory_format=torch.contiguous_format), fp32(inner, 1, 3, 3), fp32(inner),
            fp32(*w_qk.shape), fp32(w_qk.shape[0]), fp32(3, inner))


def _setup_context(ctx, inputs, output):
    up, conv_weight, conv_bias, w_qk, b_qk, norm_weight, norm_bias, skip, *ctx.scalars = inputs
    # Only y leaves `mixer_triton`; without this, eager autograd filled zero gradients for the eight residuals
    # (66 us per ViL-T block on an H100). Compiled graphs never formed them.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(up, conv_weight, w_qk, norm_weight, norm_bias, skip, *output[1:])
    ctx.dtypes = [t.dtype for t in (conv_weight, conv_bias, w_qk, b_qk, norm_weight, skip)]


def _autograd_backward(ctx, dy, *_):
    up, conv_weight, w_qk, norm_weight, norm_bias, skip, *saved = ctx.saved_tensors
    d_up, d_conv_w, d_conv_b, d_w_qk, d_b_qk, d_norm = _backward(dy, up, conv_weight, w_qk, norm_weight, norm_bias,
                                                                 skip, *saved, *ctx.scalars)
    d_weight, d_skip, d_bias = d_norm.unbind(0)
    conv_w_dtype, conv_b_dtype, w_qk_dtype, b_qk_dtype, norm_dtype, skip_dtype = ctx.dtypes
    return (d_up, d_conv_w.to(conv_w_dtype), d_conv_b.to(conv_b_dtype), d_w_qk.to(w_qk_dtype), d_b_qk.to(b_qk_dtype),
            d_weight.to(norm_dtype), None if norm_bias is None else d_bias.to(norm_bias.dtype), d_skip.to(skip_dtype),
            *[None] * 7)


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def mixer_triton(up: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor, w_qk: torch.Tensor,
                 b_qk: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor | None, skip: torch.Tensor,
                 grid: tuple[int, int], block_size: int, num_heads: int, v_width: int, variant: str,
                 eps: float) -> torch.Tensor:
    """y (B, T, inner) in up's dtype from the up-projection's output up (B, T, W; unit column stride), differentiable
    in up and every parameter. conv_weight (inner, 1, 3, 3) and conv_bias: the depthwise grid conv; w_qk (W_qk,
    inner; any strides) and b_qk: the folded q / k / gate projection of x_conv, its q and k rows block-diagonal
    with `block_size` blocks (only the block entries are read; used in up's dtype, as autocast would); v_width: the
    width of [v | gate shares | padding] after x_inner and z in up. Shapes are the layer's (it checks its
    configuration); here only layouts are ensured."""
    if conv_weight.shape[-2:] != (3, 3):
        raise ValueError(f"the fused mixer takes a 3 x 3 grid conv, got {tuple(conv_weight.shape[-2:])}")
    up = up if up.stride(-1) == 1 else up.contiguous()
    return _forward(up, conv_weight.contiguous(), conv_bias.contiguous(), w_qk, b_qk.contiguous(), norm_weight,
                    norm_bias, skip, int(grid[0]), int(grid[1]), int(block_size), num_heads, v_width, variant == "sig",
                    float(eps))[0]


__all__ = ["mixer_triton"]
