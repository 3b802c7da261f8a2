"""Sampling and generation for recurrent language models exposing `prefill(tokens)` and `step(token, state)`.

Prompts of different lengths are prefilled one by one and their states stacked, so no padding token ever enters a
recurrent state; decoding then runs batched with per-sequence stop conditions.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from xlstm_core.state import concat_states


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top_k and outside the nucleus (smallest set reaching top_p)."""
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of logits (B, V). temperature 0 is greedy; top_k / top_p (nucleus) filter first."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _as_prompts(prompt) -> list[torch.Tensor]:
    if isinstance(prompt, torch.Tensor):
        if prompt.ndim == 1:
            prompt = prompt.unsqueeze(0)
        if prompt.ndim != 2 or prompt.shape[1] == 0:
            raise ValueError(f"prompt must be (B, T) with T >= 1 or a list of 1-D tensors, got {tuple(prompt.shape)}")
        return [prompt]
    prompts = [torch.as_tensor(p).view(-1) for p in prompt]
    if not prompts or any(p.numel() == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    return [p.unsqueeze(0) for p in prompts]


@torch.no_grad()
def prefill_prompts(model, prompt) -> tuple[torch.Tensor, list]:
    """Prefill a (B, T) tensor in one call, or a list of prompts of any lengths one by one, stacking the states."""
    results = [model.prefill(p) for p in _as_prompts(prompt)]
    logits = torch.cat([r[0] for r in results], 0)
    return logits, concat_states([r[1] for r in results])


@torch.no_grad()
def stream(model, prompt, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, eos_token_id: int | None = None,
           generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield one (B,) tensor of new tokens per step. Only the fixed-size recurrent state is kept, so memory does not
    grow with the number of tokens produced. Finished rows (eos seen) keep emitting eos_token_id."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    logits, state = prefill_prompts(model, prompt)
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for index in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_token_id), token)
            finished |= token == eos_token_id
        yield token
        if bool(finished.all()) or index == max_new_tokens - 1:
            return
        logits, state = model.step(token, state)


@torch.no_grad()
def generate(model, prompt, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, eos_token_id: int | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Return the new tokens (B, N), N <= max_new_tokens (shorter when every row has stopped at eos)."""
    tokens = list(stream(model, prompt, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                         eos_token_id=eos_token_id, generator=generator))
    if not tokens:
        return torch.empty(sum(p.shape[0] for p in _as_prompts(prompt)), 0, dtype=torch.long)
    return torch.stack(tokens, 1)
