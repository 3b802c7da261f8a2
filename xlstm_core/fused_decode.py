"""One-token step of a post-up (xLSTM-7B) mLSTM block in five fused decode kernels (kernels.decode).

The unfused step runs ~10 kernels per block (norm, projections, gate math, two cell launches, head norm, output
gate, residual adds, FFN activation); at batch 1 their launch tails, not the weight reads, set the step time. Here:
  1. qkvo = rmsnorm(x) W_qkvo^T                      (norm as the projection's prologue)
  2. g = sigmoid(o) * headnorm(mLSTM step)            (gate projection, cell, head norm, output gate)
  3. x = x + g W_out^T                                (residual as epilogue)
  4. a = act(rmsnorm(x) W_gate^T) * (rmsnorm(x) W_up^T)  (norm as prologue, gated activation as epilogue)
  5. x = x + a W_down^T                                 (residual as epilogue)
The block's parameters are used as they are (no fused copies), so state dicts and training are unchanged.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
from torch import nn

from kernels import decode
from kernels.dispatch import resolve_backend
from xlstm_core.mlstm_layer import mLSTMPostUpLayer
from xlstm_core.norms import RMSNorm
from xlstm_core.state import LayerState

_IN_PLACE = contextvars.ContextVar("fused_decode_in_place", default=False)


@contextlib.contextmanager
def state_updates_in_place() -> Iterator[None]:
    """Inside this context fused block steps write the new mLSTM state over the given one and return it, instead of
    filling fresh buffers: for CUDA graphs that own the state (rl.inference.GraphedStep, GraphedDecoder), which then
    copy nothing. Outside it a given state is never modified."""
    token = _IN_PLACE.set(True)
    try:
        yield
    finally:
        _IN_PLACE.reset(token)


def _activation_name(block: nn.Module) -> str | None:
    act = block.ffn.act
    return next((name for name in decode.ACTIVATIONS if getattr(torch.nn.functional, name) is act), None)


def fused_step_applies(block: nn.Module, x: torch.Tensor, carry: bool) -> bool:
    """Whether `post_up_block_step` serves this call of `PostUpBlock.forward`: one token with a carried state, an
    mLSTM mixer with RMS norms, inference (no grad, no dropout), at most `kernels.decode.MAX_BATCH` rows, and the
    Triton backend (CUDA) with heads small enough for its cell kernel (`kernels.decode.cell_fits`). Larger batches,
    xLSTM-7B-sized heads and everything else keep the unfused path."""
    layer = block.layer
    return (carry and x.shape[1] == 1 and x.shape[0] <= decode.MAX_BATCH and not torch.is_grad_enabled()
            and not block.training and isinstance(layer, mLSTMPostUpLayer)
            and isinstance(block.norm_mixer, RMSNorm) and isinstance(block.norm_ffn, RMSNorm)
            and _activation_name(block) is not None
            and decode.cell_fits(layer.qk_dim // layer.cfg.num_heads, layer.v_dim // layer.cfg.num_heads)
            and resolve_backend(layer.cfg.backend, x.device, x.dtype) == "triton")


@torch.compiler.disable
def post_up_block_step(block: nn.Module, x: torch.Tensor, state: LayerState | None,
                       backend: str | None = None) -> tuple[torch.Tensor, LayerState]:
    """x (B, 1, E) -> (x + mixer + FFN (B, 1, E), new LayerState): the block's forward for one token with state,
    through kernels.decode with ``backend`` (default: the block config's)."""
    layer: mLSTMPostUpLayer = block.layer
    cfg = layer.cfg
    backend = backend or cfg.backend
    x = x[:, 0]
    qkvo = decode.linear(x, layer.qkvo.weight, norm_weight=block.norm_mixer.weight, eps=block.norm_mixer.eps,
                         bias=layer.qkvo.bias, pdl=True, backend=backend)
    gated, cell_state = decode.mlstm_cell(
        x, qkvo, None if state is None else state.cell, num_heads=cfg.num_heads, norm_weight=block.norm_mixer.weight,
        norm_eps=block.norm_mixer.eps, gate_weight=layer.gates.weight, gate_bias=layer.gates.bias,
        gate_soft_cap=cfg.gate_soft_cap, head_norm_weight=layer.norm.weight, head_norm_eps=layer.norm.eps,
        variant=cfg.mlstm_variant, inplace=_IN_PLACE.get() and state is not None, pdl=True, backend=backend)
    x = decode.linear(gated, layer.out.weight, bias=layer.out.bias, residual=x, pdl=True, backend=backend)
    ffn = block.ffn
    hidden = decode.linear(x, ffn.up.weight, norm_weight=block.norm_ffn.weight, eps=block.norm_ffn.eps,
                           bias=ffn.up.bias, activation=_activation_name(block), pdl=True, backend=backend)
    x = decode.linear(hidden, ffn.down.weight, bias=ffn.down.bias, residual=x, pdl=True, backend=backend)
    return x.unsqueeze(1), LayerState(None, cell_state)
