"""Block-diagonal linear maps: independent small projections per block (heads), as used for q/k/v and sLSTM gates."""
from __future__ import annotations

import torch
from torch import nn


def block_diagonal(weight: torch.Tensor, batch_dims: int = 0) -> torch.Tensor:
    """(n, d, e) blocks -> the (n * d, n * e) block-diagonal matrix, in one broadcast multiply; (n, d, k, e) blocks of k
    maps -> their k block-diagonal matrices side by side, (n * d, k * n * e). The first `batch_dims` dims are kept
    (several layers' blocks at once).

    torch.block_diag takes the blocks as separate tensors and copies each one (one kernel per block, and as many
    again in its backward): with ViL's 96 blocks of 4 x 4 per projection that was thousands of launches a step.
    """
    core = weight.dim() - batch_dims
    if core not in (3, 4):
        raise ValueError(f"expected blocks (n, d, e) or (n, d, k, e) after {batch_dims} batch dims, got shape "
                         f"{tuple(weight.shape)}")
    n, d = weight.shape[batch_dims : batch_dims + 2]
    eye = torch.eye(n, device=weight.device, dtype=weight.dtype).view(n, *[1] * (core - 2), n, 1)
    return (weight.unsqueeze(-2) * eye).reshape(*weight.shape[:batch_dims], n * d, -1)


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
