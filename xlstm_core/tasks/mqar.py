"""Multi-Query Associative Recall (Arora et al., 2023): memorise key-value pairs, then recall the queried values.

A sequence is `k1 v1 k2 v2 ... kN vN` followed by a query region in which every key appears once, at random
positions and in random order, between filler tokens. At a query key the model must output that key's value.
Keys within one sequence are distinct. Token layout: 0 = filler, keys 1..K, values K+1..2K (K = (vocab-1) // 2).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xlstm_core.tasks.batch import IGNORE, TaskBatch

FILLER = 0


@dataclass(frozen=True)
class MQARTask:
    """seq_len tokens per sample with num_pairs key-value pairs, over a vocabulary of vocab_size tokens."""

    num_pairs: int
    seq_len: int
    vocab_size: int = 256

    def __post_init__(self) -> None:
        if self.num_pairs < 1:
            raise ValueError(f"num_pairs must be positive, got {self.num_pairs}")
        if self.num_keys < self.num_pairs:
            raise ValueError(f"vocab_size={self.vocab_size} gives {self.num_keys} keys, fewer than "
                             f"num_pairs={self.num_pairs}; need vocab_size >= 2 * num_pairs + 1")
        if self.seq_len < 3 * self.num_pairs:
            raise ValueError(f"seq_len={self.seq_len} must hold the pairs and one query per key: "
                             f">= 3 * num_pairs = {3 * self.num_pairs}")

    @property
    def num_keys(self) -> int:
        return (self.vocab_size - 1) // 2

    @property
    def candidates(self) -> list[int]:
        """Token id of each value (the classes the model chooses from at a query)."""
        return list(range(1 + self.num_keys, 1 + 2 * self.num_keys))

    def sample(self, num_samples: int, rng: np.random.Generator) -> TaskBatch:
        """`num_samples` sequences; targets hold the value index at each query position."""
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        N, K, T = self.num_pairs, self.num_keys, self.seq_len
        keys = np.argsort(rng.random((num_samples, K)), axis=1)[:, :N]  # distinct keys per row
        values = rng.integers(0, K, (num_samples, N))
        tokens = np.full((num_samples, T), FILLER, dtype=np.int64)
        targets = np.full((num_samples, T), IGNORE, dtype=np.int64)
        tokens[:, 0 : 2 * N : 2] = 1 + keys
        tokens[:, 1 : 2 * N : 2] = 1 + K + values
        rows = np.arange(num_samples)[:, None]
        slots = 2 * N + np.sort(np.argsort(rng.random((num_samples, T - 2 * N)), axis=1)[:, :N], axis=1)
        order = np.argsort(rng.random((num_samples, N)), axis=1)  # which pair is asked at each slot
        tokens[rows, slots] = 1 + keys[rows, order]
        targets[rows, slots] = values[rows, order]
        lengths = torch.full((num_samples,), T, dtype=torch.long)
        return TaskBatch(torch.from_numpy(tokens), torch.from_numpy(targets),
                         torch.as_tensor(self.candidates, dtype=torch.long), lengths)


def make_mqar_split(task: MQARTask, num_samples: int, seed: int) -> TaskBatch:
    """A fixed MQAR set, deterministic per seed."""
    return task.sample(num_samples, np.random.default_rng(seed))
