"""Tokenizers from local files only: a `tokenizer.json` through the `tokenizers` package, or raw bytes."""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer


class LocalTokenizer:
    """encode(text) -> 1-D LongTensor, decode(ids) -> text, from a `tokenizer.json` file or directory."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} not found")
        self.tokenizer = Tokenizer.from_file(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.tokenizer.encode(text).ids, dtype=torch.long)

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids])


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): the tokenizer of the quickstart models."""

    vocab_size = 256

    def token_id(self, token: str) -> int | None:
        return None

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")
