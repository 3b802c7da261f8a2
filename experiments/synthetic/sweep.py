"""What the synthetic sweeps share: their common settings, and the split of a run list across processes that share
one GPU (and one result cache)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class SweepConfig:
    """Seeds, training settings (xlstm_core.tasks.TrainConfig fields) and evaluation sizes of a sweep."""
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict[str, Any] = field(default_factory=dict)
    val_samples: int = 256
    test_samples: int = 512
    eval_batch_size: int = 256


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; None or '' -> None (all runs)."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in str(text).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/n' (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"shard 'i/n' needs 0 <= i < n, got {text!r}")
    return index, count


def take_shard(jobs: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Every n-th job starting at i (round robin, so long and short runs spread over the shards)."""
    if shard is None:
        return list(jobs)
    index, count = shard
    return list(jobs[index::count])
