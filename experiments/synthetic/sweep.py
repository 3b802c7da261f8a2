"""What the synthetic sweeps share: their common settings, the cached loop over their runs, the evaluation of a run,
and the split of a run list across processes that share one GPU (and one result cache)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pandas as pd
from torch import nn
from tqdm.auto import tqdm

from xlstm_core.tasks import EvalResult, ResultCache, TaskBatch, evaluate

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


def run_cached(jobs: Sequence[T], key_of: Callable[[T], dict[str, Any]], run_job: Callable[[T], dict[str, Any]],
               cache: ResultCache, *, desc: str, progress: bool, train_missing: bool,
               shard: tuple[int, int] | None) -> pd.DataFrame:
    """One record per job (of this shard): from the cache where `key_of(job)` is there, else from `run_job(job)`,
    which is then cached; with train_missing=False, jobs not in the cache are left out."""
    records = []
    for job in tqdm(take_shard(jobs, shard), desc=desc, disable=not progress):
        key = key_of(job)
        record = cache.get(key)
        if record is None:
            if not train_missing:
                continue
            record = run_job(job)
            cache.put(key, record)
        records.append(record)
    return pd.DataFrame(records)


def evaluate_splits(model: nn.Module, splits: dict[str, TaskBatch], batch_size: int, device: str,
                    diverged: str) -> dict[str, EvalResult]:
    """Each split's evaluation; NaN results for a run that diverged (its weights are not usable)."""
    return {name: EvalResult.of_diverged_run(len(data)) if diverged else evaluate(model, data, batch_size, device)
            for name, data in splits.items()}
