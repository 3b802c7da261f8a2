"""Block-diagonal linear maps: independent small projections per block (heads), as used for q/k/v and sLSTM gates."""
from __future__ import annotations

import torch
from torch import nn


class BlockDiagonalLinear(nn.Module):
    """y = x W with W block-diagonal: `num_blocks` independent (d, d) maps over consecutive feature groups."""

    def __init__(self, dim: int, num_blocks: int, bias: bool = False):
        super().__init__()
        if dim % num_blocks:
            raise ValueError(f"dim={dim} must be divisible by num_blocks={num_blocks}")
        self.num_blocks, self.block = num_blocks, dim // num_blocks
        self.weight = nn.Parameter(torch.empty(num_blocks, self.block, self.block))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        nn.init.normal_(self.weight, std=(2 / (5 * self.block)) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.einsum("...nd,nde->...ne", x.view(*shape[:-1], self.num_blocks, self.block), self.weight)
        y = y.reshape(shape)
        return y if self.bias is None else y + self.bias
