"""xLSTM language model (xLSTM-7B style by default): embedding -> block stack -> RMSNorm -> soft-capped logits,
with constant-memory generation through the explicit recurrent state."""
from __future__ import annotations

import math

import torch
from torch import nn

from xlstm_core import generation
from xlstm_core.config import xLSTMLMConfig
from xlstm_core.mlstm_layer import soft_cap
from xlstm_core.stack import xLSTMBlockStack
from xlstm_core.state import StackState


class xLSTMLM(nn.Module):
    def __init__(self, cfg: xLSTMLMConfig):
        super().__init__()
        self.cfg = cfg
        E = cfg.stack.embedding_dim
        self.embedding = nn.Embedding(cfg.vocab_size, E)
        self.backbone = xLSTMBlockStack(cfg.stack)
        self.head = nn.Linear(E, cfg.vocab_size, bias=False)
        nn.init.normal_(self.embedding.weight, std=math.sqrt(2 / (5 * E)))
        nn.init.normal_(self.head.weight, std=math.sqrt(2 / (5 * E)))
        if cfg.tie_embeddings:
            self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor, state: StackState | None = None, return_state: bool = False):
        """tokens (B, T) int -> logits (B, T, vocab) in fp32; with return_state also the state after the last token."""
        if tokens.ndim != 2 or tokens.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"tokens must be an int tensor (B, T), got {tuple(tokens.shape)} {tokens.dtype}")
        out = self.backbone(self.embedding(tokens), state, return_state)
        x, new_state = out if (return_state or state is not None) else (out, None)
        logits = soft_cap(self.head(x).float(), self.cfg.logit_soft_cap)
        return (logits, new_state) if (return_state or state is not None) else logits

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, state: StackState | None = None,
                max_tokens_per_call: int = 16384) -> tuple[torch.Tensor, StackState]:
        """Process a prompt (B, T); returns the last position's logits (B, vocab) and the state to decode from.

        Long prompts go through in segments of about `max_tokens_per_call` tokens (over the whole batch), carrying
        the state, so prefill memory is bounded by the segment, not the prompt length.
        """
        segment = max(1, max_tokens_per_call // tokens.shape[0])
        for start in range(0, tokens.shape[1], segment):
            x, state = self.backbone(self.embedding(tokens[:, start : start + segment]), state, return_state=True)
        logits = soft_cap(self.head(x[:, -1]).float(), self.cfg.logit_soft_cap)
        return logits, state

    @torch.no_grad()
    def step(self, token: torch.Tensor, state: StackState) -> tuple[torch.Tensor, StackState]:
        """One decoding step: token (B,) -> (logits (B, vocab), new state). Memory is constant in the length."""
        logits, state = self.forward(token.view(-1, 1), state, return_state=True)
        return logits[:, 0], state

    def generate(self, prompt, max_new_tokens: int, **sampling) -> torch.Tensor:
        """Sample continuations; see `xlstm_core.generation.generate` for the options."""
        return generation.generate(self, prompt, max_new_tokens, **sampling)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
