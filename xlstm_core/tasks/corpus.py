"""A language-modelling corpus that exists on every machine: source text files under a directory (by default the
Python standard library of the running interpreter), tokenised with a byte-level BPE trained on the training files.

Files are split into train and validation by a hash of their relative path, so no file contributes to both. The
tokenizer and the token ids are cached on disk, keyed by everything that determines them.
"""
from __future__ import annotations

import hashlib
import json
import sysconfig
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from xlstm_core.tasks.batch import TaskBatch

SEPARATOR = "<|endoftext|>"


@dataclass
class CorpusConfig:
    """root=None reads the standard library of the running Python (site-packages excluded)."""

    root: str | None = None
    pattern: str = "*.py"
    max_chars: int = 2_000_000
    val_fraction: float = 0.05
    vocab_size: int = 2048
    cache_dir: str = "outputs/lm/cache"

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")
        if self.max_chars < 1 or self.vocab_size < 257:
            raise ValueError(f"need max_chars >= 1 and vocab_size >= 257 (256 bytes + separator), got "
                             f"{self.max_chars}, {self.vocab_size}")

    @property
    def root_path(self) -> Path:
        return Path(self.root) if self.root is not None else Path(sysconfig.get_paths()["stdlib"])


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def collect_files(cfg: CorpusConfig) -> tuple[list[str], list[str]]:
    """Relative paths of the (train, validation) files: files in a hash-shuffled order up to max_chars in total,
    each assigned to validation iff its path hash falls below val_fraction."""
    root = cfg.root_path
    if not root.is_dir():
        raise ValueError(f"corpus root {root} is not a directory")
    files = sorted(str(p.relative_to(root)) for p in root.rglob(cfg.pattern)
                   if p.is_file() and "site-packages" not in p.relative_to(root).parts)
    if not files:
        raise ValueError(f"no files matching {cfg.pattern!r} under {root}")
    files.sort(key=lambda rel: (_stable_hash("order:" + rel), rel))
    chosen, total = [], 0
    for rel in files:
        if total >= cfg.max_chars:
            break
        chosen.append(rel)
        total += (root / rel).stat().st_size
    is_val = [_stable_hash("split:" + rel) % 10_000 < cfg.val_fraction * 10_000 for rel in chosen]
    train = [rel for rel, v in zip(chosen, is_val) if not v]
    val = [rel for rel, v in zip(chosen, is_val) if v]
    if not train or not val:
        raise ValueError(f"{len(chosen)} files under {root} do not give both a training and a validation file; "
                         f"raise max_chars or val_fraction")
    return train, val


def _read(root: Path, files: list[str]) -> list[str]:
    return [(root / rel).read_text(encoding="utf-8", errors="replace") for rel in files]


@dataclass
class TokenCorpus:
    """Token ids of the training and validation text (documents joined by the separator token)."""

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer_path: Path
    info: dict

    def sample(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> TaskBatch:
        """Random training windows: inputs (B, seq_len) and next-token targets over the whole vocabulary."""
        return windows(self.train, rng.integers(0, len(self.train) - seq_len - 1, batch_size), seq_len)

    def validation(self, num_windows: int, seq_len: int) -> TaskBatch:
        """The first num_windows non-overlapping validation windows (fewer if the validation text is short)."""
        count = min(num_windows, (len(self.val) - 1) // seq_len)
        if count < 1:
            raise ValueError(f"validation text has {len(self.val)} tokens, too few for one window of {seq_len}")
        return windows(self.val, np.arange(count) * seq_len, seq_len)


def windows(ids: np.ndarray, starts: np.ndarray, seq_len: int) -> TaskBatch:
    index = np.asarray(starts)[:, None] + np.arange(seq_len + 1)
    chunk = torch.from_numpy(ids[index].astype(np.int64))
    lengths = torch.full((len(starts),), seq_len, dtype=torch.long)
    return TaskBatch(chunk[:, :-1], chunk[:, 1:], None, lengths)


def load_corpus(cfg: CorpusConfig) -> TokenCorpus:
    """Collect, split, train the BPE (on the training files only) and encode; everything cached under cache_dir."""
    root = cfg.root_path
    train_files, val_files = collect_files(cfg)
    key_data = {**asdict(cfg), "root": str(root.resolve()), "cache_dir": None, "train": train_files,
                "val": val_files}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:16]
    cache = Path(cfg.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    tok_path, ids_path = cache / f"bpe-{key}.json", cache / f"tokens-{key}.npz"
    if not (tok_path.exists() and ids_path.exists()):
        _build(root, train_files, val_files, cfg.vocab_size, tok_path, ids_path)
    from tokenizers import Tokenizer

    arrays = np.load(ids_path)
    info = {"root": str(root), "train_files": len(train_files), "val_files": len(val_files),
            "train_tokens": len(arrays["train"]), "val_tokens": len(arrays["val"]), "cache_key": key}
    vocab = Tokenizer.from_file(str(tok_path)).get_vocab_size()
    return TokenCorpus(arrays["train"], arrays["val"], vocab, tok_path, info)


def _build(root: Path, train_files: list[str], val_files: list[str], vocab_size: int, tok_path: Path,
           ids_path: Path) -> None:
    """Train the byte-level BPE on the training files and encode both splits (documents end with SEPARATOR)."""
    from tokenizers import ByteLevelBPETokenizer

    train_text = _read(root, train_files)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(train_text, vocab_size=vocab_size, min_frequency=2, special_tokens=[SEPARATOR],
                            show_progress=False)
    dtype = np.uint16 if bpe.get_vocab_size() <= 2**16 else np.int32
    sep = bpe.token_to_id(SEPARATOR)

    def encode(texts: list[str]) -> np.ndarray:
        ids: list[int] = []
        for enc in bpe.encode_batch(texts):
            ids.extend(enc.ids)
            ids.append(sep)
        return np.asarray(ids, dtype=dtype)

    np.savez(ids_path, train=encode(train_text), val=encode(_read(root, val_files)))
    bpe.save(str(tok_path))
