"""Loaders for Amazon Reviews (Blitzer et al., processed_acl) and MiniDomainNet; every product/style is a domain."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .synthetic import DomainArrays

AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")
MINI_DOMAINNET_DOMAINS = ("clipart", "painting", "real", "sketch")


def _parse_review(line: str) -> tuple[dict[str, int], int | None]:
    """One processed_acl line 'feat:count ... #label#:positive' -> (feature counts, label or None)."""
    counts, label = {}, None
    for token in line.split():
        feat, _, value = token.rpartition(":")
        if feat == "#label#":
            label = 1 if value == "positive" else 0
        elif feat:
            counts[feat] = int(value)
    return counts, label


def load_amazon_reviews(root: str | Path, domains: tuple[str, ...] = AMAZON_DOMAINS,
                        max_features: int = 5000) -> DomainArrays:
    """``root/<domain>/{positive,negative}.review``: log(1 + count) bag-of-n-gram vectors over the ``max_features``
    most frequent features of all domains; label 1 = positive."""
    docs: dict[str, list[tuple[dict[str, int], int]]] = {}
    vocab: Counter = Counter()
    for domain in domains:
        for fname, default in (("positive.review", 1), ("negative.review", 0)):
            path = Path(root) / domain / fname
            if not path.exists():
                raise ValueError(f"Amazon Reviews: expected {path} (processed_acl layout)")
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                counts, label = _parse_review(line)
                if counts:
                    docs.setdefault(domain, []).append((counts, default if label is None else label))
                    vocab.update(counts.keys())
    index = {f: i for i, (f, _) in enumerate(vocab.most_common(max_features))}
    out: DomainArrays = {}
    for domain, items in docs.items():
        x = np.zeros((len(items), len(index)), np.float32)
        for row, (counts, _) in enumerate(items):
            for feat, c in counts.items():
                if feat in index:
                    x[row, index[feat]] = np.log1p(c)
        out[domain] = (x, np.array([label for _, label in items], dtype=np.int64))
    return out


def load_mini_domainnet(root: str | Path, domains: tuple[str, ...] = MINI_DOMAINNET_DOMAINS,
                        splits: tuple[str, ...] = ("train", "test"), image_size: int = 32) -> DomainArrays:
    """DomainNet images listed in ``root/splits_mini/<domain>_<split>.txt`` ('<relative path> <label>' per line),
    resized to ``image_size`` and returned as (3, size, size) arrays in [0, 1]."""
    from PIL import Image

    root = Path(root)
    out: DomainArrays = {}
    for domain in domains:
        xs, ys = [], []
        for split in splits:
            listing = root / "splits_mini" / f"{domain}_{split}.txt"
            if not listing.exists():
                raise ValueError(f"MiniDomainNet: expected split file {listing}")
            for line in listing.read_text().splitlines():
                if not line.strip():
                    continue
                rel, label = line.rsplit(maxsplit=1)
                with Image.open(root / rel) as im:
                    img = im.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
                xs.append(np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / 255.0)
                ys.append(int(label))
        out[domain] = (np.stack(xs), np.array(ys, dtype=np.int64))
    return out
