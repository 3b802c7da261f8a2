"""sLSTM layer (xLSTM paper): causal conv + SiLU feeding the i/f gates, head-wise gate projections, the sLSTM cell
with head-wise recurrent mixing, per-head norm."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels import slstm
from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.conv import CausalConv1d
from xlstm_core.linear import BlockDiagonalLinear
from xlstm_core.norms import MultiHeadNorm
from xlstm_core.state import LayerState


class sLSTMLayer(nn.Module):
    def __init__(self, cfg: xLSTMBlockStackConfig):
        super().__init__()
        self.cfg = cfg
        E, NH = cfg.embedding_dim, cfg.num_heads
        self.head_dim = E // NH
        self.conv = CausalConv1d(E, cfg.slstm_conv_kernel_size) if cfg.slstm_conv_kernel_size > 0 else None
        self.igate, self.fgate, self.zgate, self.ogate = (BlockDiagonalLinear(E, NH) for _ in range(4))
        self.recurrent_weight = nn.Parameter(torch.zeros(4, NH, self.head_dim, self.head_dim))
        self.bias = nn.Parameter(torch.zeros(4 * E))
        self.norm = MultiHeadNorm(NH, self.head_dim, "layernorm", eps=1e-6)
        self.dropout = nn.Dropout(cfg.dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        E = self.cfg.embedding_dim
        nn.init.zeros_(self.recurrent_weight)
        with torch.no_grad():
            self.bias.zero_()
            # forget-gate bias spread over [3, 6] so that units start with a range of memory lengths
            self.bias[E : 2 * E] = torch.linspace(3.0, 6.0, E)

    def forward(self, x: torch.Tensor, state: LayerState | None = None, return_state: bool = False,
                grid: tuple[int, int] | None = None):
        conv_state = None
        if self.conv is not None:
            x_conv, conv_state = self.conv(x, None if state is None else state.conv)
            x_conv = F.silu(x_conv)
        else:
            x_conv = x
        pre = torch.cat([self.igate(x_conv), self.fgate(x_conv), self.zgate(x), self.ogate(x)], dim=-1)
        out = slstm(pre, recurrent_weight=self.recurrent_weight, bias=self.bias, num_heads=self.cfg.num_heads,
                    initial_state=None if state is None else state.cell, return_last_state=return_state,
                    backend=self.cfg.backend)
        h, cell_state = out if return_state else (out, None)
        y = self.dropout(self.norm(h.view(*h.shape[:-1], self.cfg.num_heads, self.head_dim)))
        return (y, LayerState(conv_state, cell_state)) if return_state else y
