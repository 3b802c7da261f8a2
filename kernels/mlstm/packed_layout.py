"""The packed projection layout `kernels.mlstm_packed` takes: one place that reads q, k, v and the gate shares out of
a layer's two fused projection outputs.

qk (B, S, W_qk): columns [q | k | igate share | fgate share | padding], q and k NH * DHQK wide (head-major), the shares
NH wide; v (B, S, W_v): [v | igate share | fgate share | padding], v NH * DHV wide. The gates are the shares' sums.
"""
from __future__ import annotations

import torch


def unpack(qk: torch.Tensor, v: torch.Tensor, num_heads: int, head_dim_qk: int, head_dim_v: int):
    """q, k (B, NH, S, DHQK) and v (B, NH, S, DHV) as views of the packed projections, and the gate shares
    (igate of qk, fgate of qk, igate of v, fgate of v), each a (B, NH, S) view."""
    inner_qk, inner_v = num_heads * head_dim_qk, num_heads * head_dim_v
    heads = lambda x, d: x.unflatten(-1, (num_heads, d)).transpose(1, 2)
    shares = lambda x, c: (x[..., c : c + num_heads].transpose(1, 2),
                           x[..., c + num_heads : c + 2 * num_heads].transpose(1, 2))
    return (heads(qk[..., :inner_qk], head_dim_qk), heads(qk[..., inner_qk : 2 * inner_qk], head_dim_qk),
            heads(v[..., :inner_v], head_dim_v), (*shares(qk, 2 * inner_qk), *shares(v, inner_v)))
