"""Models for the few-shot benchmarks: an MLP, a neural state-space model and a sequence regressor
(LSTM, or sLSTM from :mod:`xlstm_core`). All map one input tensor to one output tensor so that
:class:`fewshot.functional.FlatModel` can evaluate them at any flat parameter vector."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU network, e.g. ``MLP([1, 40, 40, 1])`` for the sinusoid benchmark."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must list at least input and output width, all positive, got {list(sizes)}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class NeuralStateSpace(nn.Module):
    """Residual neural state-space model ``s_{t+1} = s_t + f(s_t, u_t)`` simulated in open loop.

    Input ``x (n, T, n_u + n_s)``: inputs ``u`` in the first ``n_u`` channels, the initial state in the
    remaining channels at step 0 (ignored afterwards). Output: the simulated states ``(n, T, n_s)``.
    """

    def __init__(self, n_inputs: int = 1, n_states: int = 2, hidden: int = 64, init_scale: float = 1e-2):
        super().__init__()
        self.n_inputs = n_inputs
        self.f = MLP([n_states + n_inputs, hidden, n_states])
        # A near-zero increment makes the untrained model a slow integrator instead of an unstable map.
        with torch.no_grad():
            self.f.net[-1].weight.mul_(init_scale)
            self.f.net[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, s = x[..., : self.n_inputs], x[..., 0, self.n_inputs :]
        states = [s]
        for t in range(x.shape[-2] - 1):
            s = s + self.f(torch.cat([s, u[..., t, :]], dim=-1))
            states.append(s)
        return torch.stack(states, dim=-2)


class LSTMCellSeq(nn.Module):
    """A plain LSTM written with linear layers (so ``torch.func.vmap`` can batch it over tasks)."""

    def __init__(self, n_inputs: int, hidden: int, forget_bias: float = 3.0):
        super().__init__()
        self.hidden = hidden
        self.gates = nn.Linear(n_inputs + hidden, 4 * hidden)
        with torch.no_grad():
            self.gates.bias[hidden : 2 * hidden].fill_(forget_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.new_zeros(*x.shape[:-2], self.hidden)
        c = torch.zeros_like(h)
        out = []
        for t in range(x.shape[-2]):
            i, f, g, o = self.gates(torch.cat([x[..., t, :], h], dim=-1)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=-2)


class SLSTMSeq(nn.Module):
    """Input projection followed by an sLSTM block stack from :mod:`xlstm_core` (every block sLSTM)."""

    def __init__(self, n_inputs: int, hidden: int, num_blocks: int = 1, num_heads: int = 1):
        super().__init__()
        from xlstm_core import xLSTMBlockStack, xLSTMBlockStackConfig

        self.hidden = hidden
        self.proj = nn.Linear(n_inputs, hidden)
        cfg = xLSTMBlockStackConfig(
            embedding_dim=hidden, num_blocks=num_blocks, num_heads=num_heads, slstm_at=list(range(num_blocks)),
            reverse_at=[], dropout=0.0, drop_path=0.0, backend="auto", chunk_size=64,
        )
        self.stack = xLSTMBlockStack(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stack(self.proj(x))


class SequenceRegressor(nn.Module):
    """Recurrent encoder + linear head reading the last step: ``x (n, T, F)`` → ``(n, n_outputs)``.

    ``cell="lstm"`` (vmappable, the paper's choice) or ``"slstm"`` (needs ``FlatModel(vectorize=False)``).
    """

    def __init__(self, n_inputs: int, hidden: int = 32, n_outputs: int = 1, cell: str = "lstm", **cell_kwargs):
        super().__init__()
        if cell not in ("lstm", "slstm"):
            raise ValueError(f"cell must be 'lstm' or 'slstm', got {cell!r}")
        self.encoder = (LSTMCellSeq if cell == "lstm" else SLSTMSeq)(n_inputs, hidden, **cell_kwargs)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x)[..., -1, :])


def build_model(kind: str, **kwargs) -> nn.Module:
    """``kind`` ∈ {"mlp", "state_space", "sequence"}; keyword arguments go to the model class."""
    models = {"mlp": MLP, "state_space": NeuralStateSpace, "sequence": SequenceRegressor}
    if kind not in models:
        raise ValueError(f"model kind must be one of {sorted(models)}, got {kind!r}")
    return models[kind](**kwargs)
