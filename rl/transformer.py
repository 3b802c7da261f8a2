"""GPT-style causal Transformer (the Decision-Transformer baseline's backbone) with a static KV cache.

Pre-LayerNorm blocks, rotary position embeddings (relative positions, so a ring-buffer cache of ``window`` slots is
sliding-window attention and longer-than-training histories do not index a missing position table), GELU MLP.
The cache is preallocated and updated in place with tensor-valued positions, so one step can be captured in a CUDA
graph exactly like the xLSTM step.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class KVCache:
    """Per-layer keys/values (L, B, H, W, Dh) in a ring buffer of W slots and the next absolute position (0-d)."""

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor


def _rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate pairs of channels of x (..., T, Dh) by angles pos (T,) * base^(-2i/Dh)."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = pos.to(torch.float32)[:, None] * freqs[None]
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Block(nn.Module):
    """Pre-LN causal self-attention + MLP block."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.dropout = dropout

    def _qkv(self, x: torch.Tensor, pos: torch.Tensor):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return _rope(q, pos), _rope(k, pos), v

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = attn.shape
        x = x + F.dropout(self.proj(attn.transpose(1, 2).reshape(b, t, -1)), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._qkv(x, torch.arange(x.shape[1], device=x.device))
        drop = self.dropout if self.training else 0.0
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop))

    def step(self, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, D); writes this step's key/value into slot pos % W of the caches (B, H, W, Dh) in place."""
        q, k, v = self._qkv(x, pos.view(1))
        window = k_cache.shape[2]
        slot = (pos % window).view(1)
        k_cache.index_copy_(2, slot, k.to(k_cache.dtype))
        v_cache.index_copy_(2, slot, v.to(v_cache.dtype))
        valid = (torch.arange(window, device=x.device) <= pos).view(1, window)  # all slots once wrapped
        attn = F.scaled_dot_product_attention(q, k_cache.to(q.dtype), v_cache.to(q.dtype), attn_mask=valid)
        return self._finish(x, attn)


class CausalTransformer(nn.Module):
    """Stack of `Block`s with a final LayerNorm; ``forward`` over (B, T, D), ``step`` over (B, D) with a KVCache."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(f"dim={dim} must split into num_heads={num_heads} heads of even size")
        self.blocks = nn.ModuleList(Block(dim, num_heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def init_cache(self, batch: int, window: int, device=None, dtype=torch.float32) -> KVCache:
        """An empty cache of ``window`` slots (the attention span at inference)."""
        dim = self.norm.normalized_shape[0]
        shape = (len(self.blocks), batch, self.num_heads, window, dim // self.num_heads)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros((), dtype=torch.long, device=device))

    def step(self, x: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One position: x (B, D) -> (B, D); the cache is updated in place and returned."""
        h = x.unsqueeze(1)
        for i, block in enumerate(self.blocks):
            h = block.step(h, cache.k[i], cache.v[i], cache.pos)
        cache.pos.add_(1)
        return self.norm(h).squeeze(1), cache
