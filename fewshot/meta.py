"""Meta-learning baselines, batched over the tasks of a meta-batch: MAML (second order), first-order MAML,
MetaSGD (learned per-parameter inner step sizes) and Reptile."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .functional import FlatModel
from .tasks.base import Task

META_METHODS = ("maml", "fomaml", "metasgd", "reptile")


@dataclass
class MetaConfig:
    """Outer Adam (``outer_lr``) for the MAML family; Reptile moves θ by ``reptile_step`` towards the mean
    of its inner solutions (``inner_steps`` SGD steps at ``inner_lr`` for all methods)."""

    iterations: int = 1000
    meta_batch: int = 10
    inner_steps: int = 1
    inner_lr: float = 0.01
    outer_lr: float = 1e-3
    reptile_step: float = 0.1
    query_size: int = 10
    seed: int = 0


def _episode(tasks: Sequence[Task], rng: np.random.Generator, batch: int, n_support: int, n_query: int):
    """Support and disjoint query sets from the training pools of ``batch`` random tasks."""
    chosen = rng.choice(len(tasks), size=batch, replace=len(tasks) < batch)
    pool = len(tasks[0].x_train)
    if n_support + n_query > pool:
        raise ValueError(f"support {n_support} + query {n_query} exceed the training pool of {pool}")
    picks = [torch.from_numpy(rng.choice(pool, n_support + n_query, replace=False)) for _ in chosen]
    x = torch.stack([tasks[i].x_train[p] for i, p in zip(chosen, picks)])
    y = torch.stack([tasks[i].y_train[p] for i, p in zip(chosen, picks)])
    return (x[:, :n_support], y[:, :n_support]), (x[:, n_support:], y[:, n_support:])


def meta_train(
    fm: FlatModel,
    theta_init: torch.Tensor,
    tasks: Sequence[Task],
    method: str,
    support_size: int,
    cfg: MetaConfig,
    progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Meta-train from ``theta_init (p,)``; returns ``{"theta": (p,)}`` plus ``{"alpha": (p,)}`` for MetaSGD."""
    if method not in META_METHODS:
        raise ValueError(f"method must be one of {META_METHODS}, got {method!r}")
    if not tasks:
        raise ValueError("meta-training needs at least one training task")
    rng = np.random.default_rng([cfg.seed, support_size, META_METHODS.index(method)])
    theta = theta_init.detach().clone().requires_grad_(True)
    alpha = torch.full_like(theta, cfg.inner_lr, requires_grad=True)
    outer = torch.optim.Adam([theta, alpha] if method == "metasgd" else [theta], lr=cfg.outer_lr)
    for _ in tqdm(range(cfg.iterations), desc=f"meta-train {method} k={support_size}", disable=not progress):
        (x_s, y_s), (x_q, y_q) = _episode(tasks, rng, cfg.meta_batch, support_size, cfg.query_size)
        if method == "reptile":
            # Reptile needs no query set: it trains on all sampled data of the task.
            x_all, y_all = torch.cat([x_s, x_q], 1), torch.cat([y_s, y_q], 1)
            fast = theta.detach().expand(len(x_s), -1).clone().requires_grad_(True)
            inner = torch.optim.SGD([fast], lr=cfg.inner_lr)
            for _ in range(cfg.inner_steps):
                inner.zero_grad()
                fm.loss(fast, x_all, y_all).sum().backward()
                inner.step()
            with torch.no_grad():
                theta += cfg.reptile_step * (fast.mean(0) - theta)
            continue
        fast = theta.expand(len(x_s), -1)
        step_size = alpha if method == "metasgd" else cfg.inner_lr
        for _ in range(cfg.inner_steps):
            (g,) = torch.autograd.grad(fm.loss(fast, x_s, y_s).sum(), fast, create_graph=method != "fomaml")
            fast = fast - step_size * g
        outer.zero_grad()
        fm.loss(fast, x_q, y_q).mean().backward()
        outer.step()
    out = {"theta": theta.detach()}
    if method == "metasgd":
        out["alpha"] = alpha.detach()
    return out
