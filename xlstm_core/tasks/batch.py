"""The batch format shared by the synthetic tasks: tokens, per-position targets and the candidate answer tokens."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

IGNORE = -100  # target value of positions that are not scored (torch's cross-entropy ignore_index)


@dataclass
class TaskBatch:
    """tokens (N, T) int64, right-padded; targets (N, T) with a class index where the model is scored and IGNORE
    elsewhere; candidates (C,) the token id of each class (a model's logits are read at these ids only), or None
    when targets are token ids over the whole vocabulary (language modelling); lengths (N,) the unpadded lengths."""

    tokens: torch.Tensor
    targets: torch.Tensor
    candidates: torch.Tensor | None
    lengths: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> TaskBatch:
        cand = None if self.candidates is None else self.candidates.to(device)
        return TaskBatch(self.tokens.to(device), self.targets.to(device), cand, self.lengths.to(device))

    def slice(self, start: int, stop: int) -> TaskBatch:
        """Rows start:stop, trimmed to their longest sequence."""
        lengths = self.lengths[start:stop]
        width = int(lengths.max())
        return TaskBatch(self.tokens[start:stop, :width], self.targets[start:stop, :width], self.candidates, lengths)


def pad_batch(sequences: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], candidates: Sequence[int] | None,
              pad_token: int = 0, width: int | None = None) -> TaskBatch:
    """Right-pad token and target lists (pairwise of equal length) into a TaskBatch of `width` columns (default:
    the longest sequence). A fixed width keeps tensor shapes constant across training steps, which spares
    shape-specialised GPU kernels from recompiling."""
    if len(sequences) != len(targets) or not sequences:
        raise ValueError(f"need as many target lists as sequences (>= 1), got {len(sequences)} and {len(targets)}")
    lengths = [len(s) for s in sequences]
    width = max(lengths) if width is None else width
    if width < max(lengths):
        raise ValueError(f"width={width} is shorter than the longest sequence ({max(lengths)})")
    tokens = torch.full((len(sequences), width), pad_token, dtype=torch.long)
    target = torch.full((len(sequences), width), IGNORE, dtype=torch.long)
    for row, (seq, tgt) in enumerate(zip(sequences, targets)):
        if len(seq) != len(tgt):
            raise ValueError(f"sequence {row} has {len(seq)} tokens but {len(tgt)} targets")
        tokens[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        target[row, : len(tgt)] = torch.as_tensor(tgt, dtype=torch.long)
    cand = None if candidates is None else torch.as_tensor(list(candidates), dtype=torch.long)
    return TaskBatch(tokens, target, cand, torch.as_tensor(lengths, dtype=torch.long))
