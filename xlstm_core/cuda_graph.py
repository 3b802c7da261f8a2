"""Decoding with the whole step (all blocks, norms, FFN, sampling) captured in one CUDA graph.

The recurrent state lives in static buffers that each replay updates in place, so decoding costs one graph launch
per token and memory stays constant however long generation runs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

from xlstm_core.fused_decode import state_updates_in_place
from xlstm_core.generation import filter_logits, prefill_prompts
from xlstm_core.state import map_state

T = TypeVar("T")


def _leaves(state) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    map_state(state, lambda t: found.append(t) or t)
    return found


def graph_safe_sample(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None):
    """Sampling without host synchronisation: greedy for temperature 0, else Gumbel-max over filtered logits
    (the same distribution as softmax sampling, but capturable in a CUDA graph)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp_(1e-20, 1.0)))
    return (logits + gumbel).argmax(-1)


def copy_state(static: list[torch.Tensor], fresh: list[torch.Tensor]) -> None:
    """Copy a step's new state into the static state buffers, skipping tensors the step updated in place
    (`state_updates_in_place`): one multi-tensor launch instead of one copy kernel per tensor."""
    pairs = [(dst, src) for dst, src in zip(static, fresh, strict=True) if dst is not src]
    if pairs:
        torch._foreach_copy_([dst for dst, _ in pairs], [src for _, src in pairs])


def capture_graph(body: Callable[[], T], warmup: int = 2) -> tuple[torch.cuda.CUDAGraph, T]:
    """Run ``body`` ``warmup`` times on a side stream (lazy initialisation, Triton autotuning and torch.compile
    happen there, outside the capture), then capture one call; returns the graph and that call's (static) output.
    ``body`` must only touch static buffers, since a replay re-runs the captured kernels on the same memory."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(warmup):
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = body()
    return graph, out


class GraphedDecoder:
    """Captures `model.step` + sampling for a fixed batch on CUDA, then decodes by graph replays.

    decoder = GraphedDecoder(model, temperature=0)
    tokens = decoder.generate(prompt, max_new_tokens=256)      # (B, N) like xlstm_core.generate
    """

    def __init__(self, model, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 eos_token_id: int | None = None, warmup: int = 2, compile: bool = False):
        self.model, self.warmup = model, warmup
        # torch.compile fuses the step's many small elementwise kernels (norms, soft-caps, gate math) before capture;
        # at batch 1 the per-kernel gaps, not the weight reads, are what is left to remove once launches are gone.
        self.step_fn = torch.compile(model.step, dynamic=False) if compile else model.step
        self.sampling = (temperature, top_k, top_p)
        self.eos_token_id = eos_token_id
        self.graph: torch.cuda.CUDAGraph | None = None
        self.batch_size: int | None = None

    def _body(self) -> None:
        """One decode step on the static buffers: advance the state, sample, apply stop conditions."""
        with state_updates_in_place():
            logits, new_state = self.step_fn(self.token, self.state)
        copy_state(self.state_leaves, _leaves(new_state))
        nxt = graph_safe_sample(logits, *self.sampling)
        if self.eos_token_id is not None:
            nxt = torch.where(self.finished, torch.full_like(nxt, self.eos_token_id), nxt)
            self.finished |= nxt == self.eos_token_id
        self.token.copy_(nxt)

    def _capture(self, state, first_token: torch.Tensor) -> None:
        self.state = state
        self.state_leaves = _leaves(state)
        self.token = first_token.clone()
        self.finished = torch.zeros_like(first_token, dtype=torch.bool)
        saved = [t.clone() for t in self.state_leaves]
        self.graph, _ = capture_graph(self._body, self.warmup)
        self.batch_size = first_token.shape[0]
        self._reset(saved, first_token)

    def _reset(self, state_leaves, first_token) -> None:
        for static, value in zip(self.state_leaves, state_leaves):
            static.copy_(value)
        self.token.copy_(first_token)
        self.finished.zero_()

    @torch.no_grad()
    def stream(self, prompt, max_new_tokens: int, sync_every: int = 32) -> Iterator[torch.Tensor]:
        """Yield (B,) token tensors; prefill runs eagerly, every further token is one graph replay."""
        logits, state = prefill_prompts(self.model, prompt)
        if logits.device.type != "cuda":
            raise ValueError("GraphedDecoder needs the model on a CUDA device")
        first = graph_safe_sample(logits, *self.sampling)
        if self.graph is None or self.batch_size != first.shape[0]:
            self._capture(state, first)
        else:
            self._reset(_leaves(state), first)
        if self.eos_token_id is not None:
            self.finished |= first == self.eos_token_id
        for index in range(max_new_tokens):
            yield self.token.clone()
            if index == max_new_tokens - 1:
                return
            if self.eos_token_id is not None and index % sync_every == sync_every - 1 and bool(self.finished.all()):
                return
            self.graph.replay()

    def generate(self, prompt, max_new_tokens: int) -> torch.Tensor:
        tokens = list(self.stream(prompt, max_new_tokens))
        return torch.stack(tokens, 1)
