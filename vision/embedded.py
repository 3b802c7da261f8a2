"""A real small image dataset built locally: scikit-learn's bundled handwritten digits (1,797 scans, 8x8, 10
classes) rendered as RGB PNGs into an ImageNet-style folder, so the training pipeline runs end to end offline."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def build_digits_folder(root: str, size: int = 32, val_fraction: float = 0.25, seed: int = 0) -> str:
    """Write `root/train/<digit>/*.png` and `root/val/<digit>/*.png` (stratified split) and return root.

    Images are upsampled bicubically to size x size. A manifest makes repeated calls with the same arguments free;
    different arguments rebuild the folder.
    """
    if size < 8 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"size must be >= 8 and val_fraction in (0, 1), got {size}, {val_fraction}")
    manifest = os.path.join(root, "manifest.json")
    spec = {"dataset": "sklearn-digits", "size": size, "val_fraction": val_fraction, "seed": seed}
    if os.path.exists(manifest):
        with open(manifest) as f:
            if json.load(f) == spec:
                return root
    for split in ("train", "val"):
        shutil.rmtree(os.path.join(root, split), ignore_errors=True)
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=digits.target)
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            folder = os.path.join(root, split, str(digits.target[i]))
            os.makedirs(folder, exist_ok=True)
            image = Image.fromarray(images[i], mode="L").resize((size, size), Image.BICUBIC).convert("RGB")
            image.save(os.path.join(folder, f"{i:04d}.png"))
    with open(manifest, "w") as f:
        json.dump(spec, f)
    return root
