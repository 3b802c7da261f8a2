"""Shared fixtures: a small ImageNet-style folder of JPEG/PNG stripe images (learnable, written by the test)."""
import numpy as np
import pytest
from PIL import Image


def write_stripes_folder(root, per_class: int = 12, val_per_class: int = 4, size: int = 16, seed: int = 0):
    """Three classes (horizontal stripes, vertical stripes, flat noise) as JPEG (train) and PNG (val) files."""
    rng = np.random.default_rng(seed)
    grid = np.arange(size)
    patterns = {
        "horizontal": lambda: np.tile(((grid // 2) % 2)[:, None], (1, size)),
        "vertical": lambda: np.tile(((grid // 2) % 2)[None, :], (size, 1)),
        "flat": lambda: np.full((size, size), 0.5),
    }
    for split, count, ext in (("train", per_class, "jpg"), ("val", val_per_class, "png")):
        for name, pattern in patterns.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = np.clip(pattern() * 200 + 30 + rng.normal(0, 12, (size, size)), 0, 255).astype(np.uint8)
                Image.fromarray(img, mode="L").convert("RGB").save(folder / f"{i}.{ext}")
    return root


@pytest.fixture(scope="session")
def stripes_root(tmp_path_factory):
    return str(write_stripes_folder(tmp_path_factory.mktemp("stripes")))
