"""ImageNet-style folders (`<root>/train/<class>/*`, `<root>/val/<class>/*`) through timm's dataset and transforms,
with samplers that shard across DDP ranks and loaders whose randomness is a function of (seed, epoch, rank)."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, Mixup, create_dataset, create_transform
from torch.utils.data import DataLoader, Dataset, DistributedSampler


@dataclass
class DataConfig:
    """Where the images are and how they are augmented (defaults: the ViL / DeiT-III ImageNet recipe)."""

    root: str = ""
    input_size: int = 224
    batch_size: int = 256  # per process
    num_workers: int = 8
    scale: tuple[float, float] = (0.08, 1.0)
    hflip: float = 0.5
    color_jitter: float = 0.3
    auto_augment: str | None = "3a"  # "3a" = 3-Augment; "rand-m9-mstd0.5-inc1" = RandAugment; None = off
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    re_prob: float = 0.0
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD

    def __post_init__(self) -> None:
        self.scale, self.mean, self.std = tuple(self.scale), tuple(self.mean), tuple(self.std)
        if self.input_size < 1 or self.batch_size < 1:
            raise ValueError("DataConfig: input_size and batch_size must be positive")
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ValueError(f"DataConfig: scale must satisfy 0 < lo <= hi <= 1, got {self.scale}")


def check_image_folder(root: str) -> None:
    """Raise a ValueError that says what is expected unless root/train and root/val hold class folders."""
    for split in ("train", "val"):
        path = os.path.join(root, split)
        if not os.path.isdir(path) or not any(e.is_dir() for e in os.scandir(path)):
            raise ValueError(f"expected an ImageNet-style folder: {path}/<class>/*.jpg|png (none found)")


def build_datasets(cfg: DataConfig) -> tuple[Dataset, Dataset]:
    """timm ImageDatasets for train (random crop, flip, 3-Augment/RandAugment, colour jitter, erasing) and val
    (resize + centre crop)."""
    check_image_folder(cfg.root)
    train_tf = create_transform(cfg.input_size, is_training=True, scale=cfg.scale, hflip=cfg.hflip,
                                color_jitter=cfg.color_jitter, auto_augment=cfg.auto_augment,
                                interpolation=cfg.interpolation, re_prob=cfg.re_prob, mean=cfg.mean, std=cfg.std)
    val_tf = create_transform(cfg.input_size, is_training=False, interpolation=cfg.interpolation,
                              crop_pct=cfg.crop_pct, mean=cfg.mean, std=cfg.std)
    train = create_dataset("", root=cfg.root, split="train", is_training=True, transform=train_tf)
    val = create_dataset("", root=cfg.root, split="val", transform=val_tf)
    if train.reader.class_to_idx != val.reader.class_to_idx:
        raise ValueError("train and val folders must contain the same class folders")
    return train, val


def num_classes(dataset: Dataset) -> int:
    return len(dataset.reader.class_to_idx)


class ShardSampler(torch.utils.data.Sampler):
    """Every `world`-th index from `rank`: each sample evaluated exactly once across ranks (no padding)."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = list(range(rank, size, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def train_loader(dataset: Dataset, cfg: DataConfig, seed: int, epoch: int, rank: int, world: int) -> DataLoader:
    """Shuffled, sharded, drop-last loader for one epoch; its order and worker seeds depend only on
    (seed, epoch, rank), which is what makes resuming from an epoch checkpoint exact."""
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + rank)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.num_workers,
                      drop_last=True, generator=generator, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False)


def eval_loader(dataset: Dataset, cfg: DataConfig, rank: int, world: int) -> DataLoader:
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=ShardSampler(len(dataset), rank, world),
                      num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())


def build_mixup(cfg: DataConfig, classes: int) -> Mixup | None:
    """timm Mixup/CutMix with label smoothing, or None when both are off."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                 num_classes=classes)
