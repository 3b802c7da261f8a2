"""ImageFolder pipeline (timm transforms on JPEG/PNG files the tests write) and the embedded digits dataset."""
import os

import pytest
import torch

from vision.data import DataConfig, ShardSampler, build_datasets, build_mixup, num_classes, train_loader
from vision.embedded import build_digits_folder


def test_image_folder_through_timm_pipeline(stripes_root):
    cfg = DataConfig(root=stripes_root, input_size=16, batch_size=4, num_workers=0, auto_augment="3a",
                     mixup=0.8, cutmix=1.0)
    train, val = build_datasets(cfg)
    assert (len(train), len(val), num_classes(train)) == (36, 12, 3)
    assert train.reader.class_to_idx == {"flat": 0, "horizontal": 1, "vertical": 2}
    image, label = val[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 0
    images, labels = next(iter(train_loader(train, cfg, seed=0, epoch=0, rank=0, world=1)))
    mixed, soft = build_mixup(cfg, 3)(images, labels)
    assert mixed.shape == (4, 3, 16, 16) and soft.shape == (4, 3)
    torch.testing.assert_close(soft.sum(1), torch.ones(4))


def test_train_loader_order_depends_only_on_seed_epoch_rank(stripes_root):
    cfg = DataConfig(root=stripes_root, input_size=16, batch_size=6, num_workers=0, auto_augment=None)
    train, _ = build_datasets(cfg)

    def labels(seed, epoch, rank, world):
        torch.manual_seed(123)  # the loader must not depend on the global RNG for its order
        return [y.tolist() for _, y in train_loader(train, cfg, seed, epoch, rank, world)]

    assert labels(0, 1, 0, 1) == labels(0, 1, 0, 1)
    assert labels(0, 1, 0, 1) != labels(0, 2, 0, 1)
    assert len(labels(0, 0, 0, 2)) == 3  # 36 images / 2 ranks / batch 6


def test_shard_sampler_covers_each_index_once():
    shards = [list(ShardSampler(10, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))


def test_missing_folder_is_reported(tmp_path):
    with pytest.raises(ValueError, match="ImageNet-style"):
        build_datasets(DataConfig(root=str(tmp_path)))
    with pytest.raises(ValueError, match="scale"):
        DataConfig(scale=(0.5, 0.2))


def test_digits_folder_is_stratified_and_cached(tmp_path):
    root = build_digits_folder(str(tmp_path / "digits"), size=8, val_fraction=0.25)
    counts = {split: {c: len(os.listdir(os.path.join(root, split, c))) for c in os.listdir(os.path.join(root, split))}
              for split in ("train", "val")}
    assert len(counts["train"]) == len(counts["val"]) == 10
    assert sum(counts["train"].values()) + sum(counts["val"].values()) == 1797
    assert sum(counts["val"].values()) == 450
    assert min(counts["val"].values()) >= 43  # every digit is represented in val (about 45 each)
    stamp = os.path.getmtime(os.path.join(root, "manifest.json"))
    build_digits_folder(root, size=8, val_fraction=0.25)
    assert os.path.getmtime(os.path.join(root, "manifest.json")) == stamp
