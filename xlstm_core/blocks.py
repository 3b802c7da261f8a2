"""Residual blocks: pre-up (norm -> mLSTM layer with its own up-projection) and post-up (norm -> sequence mixer,
then norm -> gated FFN)."""
from __future__ import annotations

import torch
from timm.layers import DropPath
from torch import nn

from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.ffn import GatedFFN
from xlstm_core.fused_decode import fused_step_applies, post_up_block_step
from xlstm_core.mlstm_layer import FoldedWeights, mLSTMPostUpLayer, mLSTMPreUpLayer
from xlstm_core.norms import make_norm
from xlstm_core.slstm_layer import sLSTMLayer
from xlstm_core.state import LayerState


class PreUpBlock(nn.Module):
    """x + DropPath(mLSTM layer(norm(x))): the xLSTM-paper mLSTM block and the ViL block."""

    def __init__(self, cfg: xLSTMBlockStackConfig):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.embedding_dim, cfg.norm_eps, cfg.bias)
        self.layer = mLSTMPreUpLayer(cfg)
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, return_state: bool = False,
                grid: tuple[int, int] | None = None, folded: FoldedWeights | None = None):
        """`folded`: the layer's folded projection weights where the stack computed them (`fold_weights`)."""
        out = self.layer(self.norm(x), state, return_state, grid, folded)
        y, new_state = out if return_state else (out, None)
        x = x + self.drop_path(y)
        return (x, new_state) if return_state else x


class PostUpBlock(nn.Module):
    """x + mixer(norm(x)), then x + FFN(norm(x)): the sLSTM block and the xLSTM-7B mLSTM block.

    A one-token inference step of the mLSTM block at small batch on CUDA runs as five fused decode kernels
    (xlstm_core.fused_decode); everything else takes the modules below."""

    def __init__(self, cfg: xLSTMBlockStackConfig, mixer: nn.Module):
        super().__init__()
        self.norm_mixer = make_norm(cfg.norm, cfg.embedding_dim, cfg.norm_eps, cfg.bias)
        self.layer = mixer
        self.norm_ffn = make_norm(cfg.norm, cfg.embedding_dim, cfg.norm_eps, cfg.bias)
        self.ffn = GatedFFN(cfg.embedding_dim, cfg.ffn_dim, cfg.ffn_activation, cfg.bias, cfg.dropout)
        self.drop_path = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, state: LayerState | None = None, return_state: bool = False,
                grid: tuple[int, int] | None = None):
        if fused_step_applies(self, x, return_state or state is not None):
            y, new_state = post_up_block_step(self, x, state)
            return (y, new_state) if return_state else y
        out = self.layer(self.norm_mixer(x), state, return_state, grid)
        y, new_state = out if return_state else (out, None)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.ffn(self.norm_ffn(x)))
        return (x, new_state) if return_state else x


def make_block(cfg: xLSTMBlockStackConfig, index: int) -> nn.Module:
    """The block at `index` of a stack: sLSTM where cfg.slstm_at says so, else the configured mLSTM block."""
    if index in cfg.slstm_at:
        return PostUpBlock(cfg, sLSTMLayer(cfg))
    if cfg.mlstm_block == "pre_up":
        return PreUpBlock(cfg)
    return PostUpBlock(cfg, mLSTMPostUpLayer(cfg))
