"""Recurrent state as explicit data: what each layer carries from one call to the next."""
from __future__ import annotations

from typing import NamedTuple

import torch


class LayerState(NamedTuple):
    """conv: the causal conv's last inputs (or None); cell: (C, n, m) for mLSTM, (c, n, m, h) for sLSTM."""

    conv: torch.Tensor | None
    cell: tuple[torch.Tensor, ...] | None


StackState = list  # one LayerState per block (None for a block that has not run yet)


def map_state(state, fn):
    """Apply fn to every tensor of a (nested) state, e.g. to move it, detach it or select batch rows."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return fn(state)
    if isinstance(state, LayerState):
        return LayerState(map_state(state.conv, fn), map_state(state.cell, fn))
    return type(state)(map_state(s, fn) for s in state)


def concat_states(states: list):
    """Concatenate structurally equal states (e.g. of several prompts) along the batch dim."""
    first = states[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(states, 0)
    if isinstance(first, LayerState):
        return LayerState(concat_states([s.conv for s in states]), concat_states([s.cell for s in states]))
    return type(first)(concat_states(list(parts)) for parts in zip(*states))
