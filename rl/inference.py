"""Fast inference: one `ActionModel.step` captured in a CUDA graph with static input and state buffers.

Per-step latency at small batch is bound by kernel-launch overhead (one launch per op per layer); replaying a
captured graph removes it. The captured step copies the new recurrent state into the static state buffers (LRAM)
or updates the KV cache in place (DT), so replaying the graph advances the rollout by one step.
"""
from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from xlstm_core.cuda_graph import capture_graph, copy_state
from xlstm_core.fused_decode import state_updates_in_place

from .transformer import KVCache


def state_tensors(state) -> list[torch.Tensor]:
    """The tensors of an LRAM stack state (nested lists/tuples) or of a DT `KVCache`."""
    if isinstance(state, KVCache):
        return [state.k, state.v, state.pos]
    return [t for t in tree_leaves(state) if isinstance(t, torch.Tensor)]


class GraphedStep:
    """``step(inputs) -> logits`` replaying a CUDA graph of ``model.step(inputs, state)`` for fixed shapes.

    ``inputs`` fixes the shapes (a step batch as `ActionModel.step` takes it, on the GPU); ``state`` must be a
    concrete state (not None), which the graph owns and advances. The state is restored after the warm-up runs.
    ``compile=True`` runs `torch.compile` on the step before capture: it fuses the many small elementwise kernels
    of each block, whose gaps, not the weight reads, bound a batch-1 step once launches are gone.
    """

    def __init__(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], state, warmup: int = 3,
                 compile: bool = False):
        if state is None:
            raise ValueError("GraphedStep needs a concrete state: run one eager step first to create it")
        if not all(v.is_cuda for v in inputs.values()):
            raise ValueError("GraphedStep needs CUDA inputs")
        self.state = state
        self.step_fn = torch.compile(model.step, dynamic=False) if compile else model.step
        self.inputs = {k: v.clone() for k, v in inputs.items()}
        saved = [t.clone() for t in state_tensors(state)]
        self.graph, self.logits = capture_graph(self._run, warmup)
        for dst, src in zip(state_tensors(state), saved):
            dst.copy_(src)

    def _run(self) -> torch.Tensor:
        with state_updates_in_place():
            logits, new_state = self.step_fn(self.inputs, self.state)
        copy_state(state_tensors(self.state), state_tensors(new_state))
        return logits

    def __call__(self, inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Copy ``inputs`` into the static buffers (if given), replay, return the (static) logits buffer."""
        if inputs is not None:
            for k, v in inputs.items():
                self.inputs[k].copy_(v)
        self.graph.replay()
        return self.logits
