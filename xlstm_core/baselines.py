"""Baseline language models with xLSTMLM's interface (`model(tokens) -> logits`): a Llama-style causal Transformer
(RMSNorm, rotary position embeddings, SwiGLU, PyTorch SDPA) and a classic LSTM, plus parameter matching."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xlstm_core.config import round_up
from xlstm_core.ffn import GatedFFN
from xlstm_core.norms import RMSNorm


def _check_tokens(tokens: torch.Tensor) -> None:
    if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tokens must be an int tensor (B, T), got {tuple(tokens.shape)} {tokens.dtype}")


@dataclass
class TransformerConfig:
    """Llama-style decoder. ffn_dim=None takes 8/3 * embedding_dim rounded up to a multiple of 64."""

    vocab_size: int = 256
    embedding_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    ffn_dim: int | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.vocab_size < 1 or self.embedding_dim < 1 or self.num_layers < 1:
            raise ValueError("TransformerConfig: vocab_size, embedding_dim and num_layers must be positive")
        if self.num_heads < 1 or self.embedding_dim % self.num_heads or (self.embedding_dim // self.num_heads) % 2:
            raise ValueError(f"TransformerConfig: embedding_dim={self.embedding_dim} must split into num_heads="
                             f"{self.num_heads} heads of even size (rotary embeddings rotate pairs)")
        if self.ffn_dim is None:
            self.ffn_dim = round_up(8 * self.embedding_dim / 3, 64)
        if self.ffn_dim < 1:
            raise ValueError(f"TransformerConfig: ffn_dim must be positive, got {self.ffn_dim}")


def rotary(x: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate feature pairs (i, i + D/2) of x (B, H, T, D) by position-dependent angles t * base^(-2i/D), so that
    dot products of rotated queries and keys depend on positions only through their difference."""
    T, D = x.shape[-2], x.shape[-1]
    inv_freq = base ** (-torch.arange(0, D // 2, device=x.device, dtype=torch.float32) * 2 / D)
    angles = torch.arange(T, device=x.device, dtype=torch.float32)[:, None] * inv_freq
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.num_heads, self.rope_base, self.dropout = cfg.num_heads, cfg.rope_base, cfg.dropout
        self.qkv = nn.Linear(cfg.embedding_dim, 3 * cfg.embedding_dim, bias=False)
        self.out = nn.Linear(cfg.embedding_dim, cfg.embedding_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, E // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = rotary(q, self.rope_base), rotary(k, self.rope_base)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, T, E))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.embedding_dim, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm_ffn = RMSNorm(cfg.embedding_dim, cfg.norm_eps)
        self.ffn = GatedFFN(cfg.embedding_dim, cfg.ffn_dim, "silu", bias=False, dropout=cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm_attn(x))
        return x + self.ffn(self.norm_ffn(x))


class TransformerLM(nn.Module):
    """Llama-style causal LM: embedding -> pre-RMSNorm blocks (RoPE attention, SwiGLU) -> RMSNorm -> logits."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.embedding_dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.embedding_dim, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
        for block in self.blocks:  # GPT-2 style: scale residual-branch outputs down with depth
            for lin in (block.attn.out, block.ffn.down):
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.cfg.num_layers))
        if self.cfg.tie_embeddings:
            self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int -> logits (B, T, vocab) in fp32."""
        _check_tokens(tokens)
        x = self.embedding(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)).float()


@dataclass
class LSTMConfig:
    """Classic (sigmoid-gated) multi-layer LSTM language model."""

    vocab_size: int = 256
    embedding_dim: int = 128
    hidden_dim: int = 128
    num_layers: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if min(self.vocab_size, self.embedding_dim, self.hidden_dim, self.num_layers) < 1:
            raise ValueError("LSTMConfig: vocab_size, embedding_dim, hidden_dim and num_layers must be positive")


class LSTMLM(nn.Module):
    """embedding -> torch.nn.LSTM -> linear head."""

    def __init__(self, cfg: LSTMConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.lstm = nn.LSTM(cfg.embedding_dim, cfg.hidden_dim, cfg.num_layers, batch_first=True,
                            dropout=cfg.dropout if cfg.num_layers > 1 else 0.0)
        self.head = nn.Linear(cfg.hidden_dim, cfg.vocab_size, bias=False)
        with torch.no_grad():  # forget-gate bias 1 (gates are ordered i, f, g, o): remember by default
            for name, bias in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    bias[cfg.hidden_dim : 2 * cfg.hidden_dim].fill_(1.0)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) int -> logits (B, T, vocab) in fp32."""
        _check_tokens(tokens)
        h, _ = self.lstm(self.embedding(tokens))
        return self.head(h).float()


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())


def match_parameters(build: Callable[[int], nn.Module], target: int, choices: Iterable[int]) -> tuple[int, nn.Module]:
    """Pick the choice of a size knob (e.g. a Transformer's ffn_dim) whose model has the parameter count closest to
    `target`; returns (choice, model). Candidates are sized on the meta device, so this costs no memory."""
    choices = list(choices)
    if not choices or target < 1:
        raise ValueError(f"need at least one choice and a positive target, got {len(choices)} choices, "
                         f"target={target}")
    with torch.device("meta"):
        counts = [count_parameters(build(choice)) for choice in choices]
    best = min(range(len(choices)), key=lambda i: (abs(counts[i] - target), choices[i]))
    return choices[best], build(choices[best])
