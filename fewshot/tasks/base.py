"""Tasks, task families and batched support/query sampling shared by every benchmark."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np
import torch

SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass
class Task:
    """One task: a pool of labelled training samples (supports are drawn from it) and a held-out test pool.

    ``x_*`` have shape ``(n, ...)`` and ``y_*`` ``(n, ...)``; samples are independent units of the loss
    (points for regression, windows for sequence models).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    params: dict[str, float | str] = field(default_factory=dict)

    def __post_init__(self):
        if len(self.x_train) != len(self.y_train) or len(self.x_test) != len(self.y_test):
            raise ValueError("x and y of a task must have the same number of samples")


class TaskFamily(Protocol):
    """A distribution over tasks. ``task(split, i)`` is deterministic given the family's seed."""

    name: str

    def task(self, split: str, index: int) -> Task: ...

    def tasks(self, split: str, indices: list[int]) -> list[Task]: ...

    def nominal_task(self) -> Task: ...


def task_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of task ``index`` of ``split``: independent streams for every (seed, split, index)."""
    if split not in SPLITS and split != "nominal":
        raise ValueError(f"split must be one of {sorted(SPLITS)} or 'nominal', got {split!r}")
    return np.random.default_rng([seed, SPLITS.get(split, 3), index])


def make_tasks(family: TaskFamily, split: str, n: int) -> list[Task]:
    if n < 1:
        raise ValueError(f"need at least one task, got n={n}")
    return family.tasks(split, list(range(n)))


def _check_same_pool_sizes(tasks: Sequence[Task]) -> None:
    sizes = {(len(t.x_train), len(t.x_test)) for t in tasks}
    if len(sizes) != 1:
        raise ValueError(f"tasks in a batch must have equal pool sizes, got {sorted(sizes)}")


def sample_supports(tasks: Sequence[Task], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``size`` training samples per task without replacement → ``x (B, size, ...)``, ``y (B, size, ...)``."""
    _check_same_pool_sizes(tasks)
    pool = len(tasks[0].x_train)
    if not 1 <= size <= pool:
        raise ValueError(f"support size must be in [1, {pool}] (the training pool), got {size}")
    xs, ys = [], []
    for i, t in enumerate(tasks):
        idx = torch.from_numpy(np.random.default_rng([seed, size, i]).choice(pool, size, replace=False))
        xs.append(t.x_train[idx])
        ys.append(t.y_train[idx])
    return torch.stack(xs), torch.stack(ys)


def stack_pool(tasks: Sequence[Task], pool: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the ``"train"`` or ``"test"`` pools of equally sized tasks → ``(B, n, ...)`` tensors."""
    if pool not in ("train", "test"):
        raise ValueError(f"pool must be 'train' or 'test', got {pool!r}")
    _check_same_pool_sizes(tasks)
    return (torch.stack([getattr(t, f"x_{pool}") for t in tasks]), torch.stack([getattr(t, f"y_{pool}") for t in tasks]))
