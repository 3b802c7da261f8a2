"""Gated feed-forward network of post-up blocks (GeGLU in the xLSTM paper, SwiGLU in xLSTM-7B)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}


class GatedFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu", bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(dim, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, dim, bias=bias)
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.dropout(self.down(self.act(gate) * up))
