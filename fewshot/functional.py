"""Evaluate an ``nn.Module`` at flat parameter vectors, batched over tasks.

Every adaptation and meta-learning routine in this package works on a ``(B, p)`` tensor ``theta`` holding one
flat parameter vector per task, which lets B tasks adapt in one vectorised call (``torch.func.vmap``) and lets
plain element-wise optimizers (SGD, Adam) act on all tasks at once without mixing them.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap


class FlatModel:
    """A functional view of ``module``: ``predict(theta, x)`` and per-task ``loss(theta, x, y)``.

    ``vectorize=False`` loops over tasks instead of using ``vmap`` (for modules whose operators vmap cannot
    batch); both paths give the same numbers.
    """

    def __init__(self, module: nn.Module, vectorize: bool = True):
        self.module = module
        self.vectorize = vectorize
        self.names = [n for n, _ in module.named_parameters()]
        self.shapes = [p.shape for _, p in module.named_parameters()]
        self.numels = [p.numel() for _, p in module.named_parameters()]
        self.buffers = dict(module.named_buffers())

    @property
    def num_params(self) -> int:
        return sum(self.numels)

    def flatten(self) -> torch.Tensor:
        """The module's current parameters as one ``(p,)`` vector (detached copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()]).clone()

    def load(self, theta: torch.Tensor) -> nn.Module:
        """Write ``theta (p,)`` into the module's parameters and return the module."""
        torch.nn.utils.vector_to_parameters(theta.detach(), self.module.parameters())
        return self.module

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        chunks = torch.split(theta, self.numels)
        params = {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}
        return {**params, **self.buffers}

    def predict_one(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Model output at ``theta (p,)`` for inputs ``x (n, ...)``."""
        return functional_call(self.module, self.unflatten(theta), (x,))

    def predict(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs for ``theta (B, p)`` and ``x (B, n, ...)`` → ``(B, n, ...)``."""
        if self.vectorize:
            return vmap(self.predict_one)(theta, x)
        return torch.stack([self.predict_one(t, xi) for t, xi in zip(theta, x)])

    def loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-task mean squared error, shape ``(B,)``."""
        err = (self.predict(theta, x) - y).square()
        return err.reshape(err.shape[0], -1).mean(dim=1)
