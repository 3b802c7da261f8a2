"""How (packed) sequences split into chunks: the index tables the chunkwise Triton kernels walk.

Every sequence is cut into chunks of at most `chunk_size` tokens that start at the sequence's own first token, so
a packed batch (cu_seqlens) and a plain batch share one code path and no input is ever padded: the last chunk of a
sequence is simply shorter and the kernels mask it.

Recurrent states live in *slots*: a sequence with c chunks owns c + 1 consecutive slots, slot j holding the state
before its chunk j and the last slot the state after its final chunk.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkLayout:
    """Index tables (int32, on the data's device) and their sizes.

    chunks: (4, n_chunks) rows = batch row, first token within the row, number of tokens, start-state slot.
    seqs: (3, n_seqs) rows = first chunk, number of chunks, first slot.
    bounds: (n_seqs + 1,) int64 token bounds of the sequences in the flattened (row, token) order; seq_id: (B * S,)
    int64 sequence index of each flattened token.
    """

    chunks: torch.Tensor
    seqs: torch.Tensor
    bounds: torch.Tensor
    seq_id: torch.Tensor
    n_chunks: int
    n_seqs: int
    n_slots: int
    seq_lengths: tuple[int, ...]

    @property
    def first_slots(self) -> torch.Tensor:
        return self.seqs[2].long()

    @property
    def last_slots(self) -> torch.Tensor:
        return (self.seqs[2] + self.seqs[1]).long()


def _build(rows: list[int], starts: list[int], lengths: list[int], row_len: int, chunk_size: int,
           device) -> ChunkLayout:
    chunk_cols: list[list[int]] = [[], [], [], []]
    seq_cols: list[list[int]] = [[], [], []]
    for seq, (row, start, length) in enumerate(zip(rows, starts, lengths)):
        n = math.ceil(length / chunk_size)
        first = len(chunk_cols[0])
        seq_cols[0].append(first)
        seq_cols[1].append(n)
        seq_cols[2].append(first + seq)
        for c in range(n):
            chunk_cols[0].append(row)
            chunk_cols[1].append(start + c * chunk_size)
            chunk_cols[2].append(min(chunk_size, length - c * chunk_size))
            chunk_cols[3].append(first + c + seq)
    n_chunks = len(chunk_cols[0])
    bounds = [row * row_len + start for row, start in zip(rows, starts)]
    bounds.append(bounds[-1] + lengths[-1])
    lengths_t = torch.tensor(lengths)
    return ChunkLayout(
        chunks=torch.tensor(chunk_cols, dtype=torch.int32).to(device),
        seqs=torch.tensor(seq_cols, dtype=torch.int32).to(device),
        bounds=torch.tensor(bounds, dtype=torch.int64).to(device),
        seq_id=torch.repeat_interleave(torch.arange(len(rows)), lengths_t).to(device),
        n_chunks=n_chunks,
        n_seqs=len(rows),
        n_slots=n_chunks + len(rows),
        seq_lengths=tuple(lengths),
    )


@functools.lru_cache(maxsize=64)
def _cached(rows: tuple, starts: tuple, lengths: tuple, row_len: int, chunk_size: int,
            device: torch.device) -> ChunkLayout:
    return _build(list(rows), list(starts), list(lengths), row_len, chunk_size, device)


def chunk_layout(batch: int, seq_len: int, chunk_size: int, device: torch.device,
                 cu_seqlens: tuple[int, ...] | None = None) -> ChunkLayout:
    """Layout of `batch` rows of `seq_len` tokens, or of the sequences packed in one row at `cu_seqlens` bounds."""
    if cu_seqlens is None:
        rows, starts, lengths = tuple(range(batch)), (0,) * batch, (seq_len,) * batch
    else:
        rows = (0,) * (len(cu_seqlens) - 1)
        starts, lengths = tuple(cu_seqlens[:-1]), tuple(b - a for a, b in zip(cu_seqlens, cu_seqlens[1:]))
    return _cached(rows, starts, lengths, seq_len, chunk_size, torch.device(device))
