"""Normalisation layers: LayerNorm / RMSNorm over the feature dim, and per-head (group) norms for cell outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learnable scale (computed in fp32, returned in the input dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def make_norm(kind: str, dim: int, eps: float, bias: bool = False) -> nn.Module:
    """"layernorm" (weight, optional bias) or "rmsnorm" over the last dim."""
    if kind == "rmsnorm":
        return RMSNorm(dim, eps)
    return nn.LayerNorm(dim, eps=eps, bias=bias)


def multi_head_norm(x: torch.Tensor, weight: torch.Tensor, kind: str = "layernorm", eps: float = 1e-6) -> torch.Tensor:
    """Each head of x (..., NH, DH) normalised on its own in fp32 ("layernorm" centres, "rmsnorm" does not), back in
    x's dtype, flattened to (..., NH * DH) and scaled by weight (NH * DH,)."""
    xf = x.float()
    if kind == "layernorm":
        xf = F.layer_norm(xf, xf.shape[-1:], eps=eps)
    else:
        xf = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    return xf.flatten(-2).to(x.dtype) * weight


class MultiHeadNorm(nn.Module):
    """Normalise each head's features separately (group norm over heads) with one learnable scale per feature.

    Input (..., NH, DH); output (..., NH * DH). `kind` "layernorm" centres, "rmsnorm" does not.
    """

    def __init__(self, num_heads: int, head_dim: int, kind: str = "layernorm", eps: float = 1e-6):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.ones(num_heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return multi_head_norm(x, self.weight, self.kind, self.eps)
