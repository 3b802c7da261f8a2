"""Byte-level text corpora that need no download: any text, or the Python standard library's own sources."""
from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import torch


class ByteCorpus:
    """A text as bytes (vocabulary 256), split into train and validation parts, with random-window batches."""

    vocab_size = 256

    def __init__(self, data: bytes, val_fraction: float = 0.1):
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        cut = int(len(tokens) * (1 - val_fraction))
        self.splits = {"train": tokens[:cut], "val": tokens[cut:]}

    @classmethod
    def python_stdlib(cls, max_bytes: int = 2_000_000, val_fraction: float = 0.1) -> "ByteCorpus":
        """The sources of the running interpreter's standard library (top-level modules, sorted by name)."""
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        chunks, total = [], 0
        for path in sorted(stdlib.glob("*.py")):
            data = path.read_bytes()
            chunks.append(data)
            total += len(data)
            if total >= max_bytes:
                break
        if not chunks:
            raise FileNotFoundError(f"no Python sources found under {stdlib}")
        return cls(b"\n".join(chunks)[:max_bytes], val_fraction)

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None):
        """Random windows: inputs (B, T) and next-byte targets (B, T)."""
        data = self.splits[split]
        if len(data) <= seq_len + 1:
            raise ValueError(f"the {split} split has {len(data)} bytes, too few for windows of {seq_len + 1}")
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        return window[:, :-1], window[:, 1:]

    def unigram_loss(self) -> float:
        """Cross-entropy (nats/byte) on validation of the train split's byte frequencies (add-one smoothed): the
        loss of a model that ignores context, which a sequence model must beat."""
        counts = torch.bincount(self.splits["train"], minlength=256).double() + 1
        log_p = (counts / counts.sum()).log()
        return float(-log_p[self.splits["val"]].mean())


def bits_per_byte(loss_nats: float) -> float:
    return loss_nats / math.log(2)
