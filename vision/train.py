"""Image-classification training and evaluation for any timm model (ViL, DeiT, ...) on an ImageNet-style folder:
AdamW + warmup/cosine per step, grad clipping, Mixup/CutMix + label smoothing, optional EMA, bf16 autocast on GPU,
DDP, a checkpoint every epoch with exact resume, tqdm, metrics CSV and curve PNG."""
from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3, accuracy
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import vision  # noqa: F401  (registers the ViL models with timm)
from vision.data import DataConfig, build_datasets, build_mixup, eval_loader, num_classes, train_loader
from vision.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from vision.metrics import plot_curves, write_csv
from vision.throughput import check_compile_mode


@dataclass
class TrainConfig:
    """One training run. `lr` is per 1024 images (scaled by the global batch size); epochs count passes over train."""

    model: str = "vil_tiny_patch16_224"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 300
    warmup_epochs: float = 5.0
    lr: float = 1e-3
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    clip_grad: float | None = 1.0
    ema_decay: float | None = None
    amp: bool = True  # bf16 autocast (GPU only)
    compile: bool = False  # run the model under torch.compile (fuses ViL's elementwise chains; first steps compile)
    # torch.compile's mode: None (default) or one of torch._inductor.list_mode_options(). "reduce-overhead" replays
    # CUDA graphs: ViL-T's compiled training step launches ~2,500 kernels, and on an H100 at batch 256 it ran at
    # 2,747 img/s bound by launches, 4,673 img/s with graphs (benchmarks/results/vil_throughput_tiny_s12.json).
    compile_mode: str | None = None
    seed: int = 0
    device: str = "auto"
    out_dir: str = "outputs/vision/run"
    resume: bool = True
    stop_epoch: int | None = None  # end this invocation after this epoch (time-limited jobs); resume continues
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        self.betas = tuple(self.betas)
        if self.epochs < 1 or self.warmup_epochs < 0 or self.lr <= 0:
            raise ValueError("TrainConfig: epochs >= 1, warmup_epochs >= 0 and lr > 0 are required")
        check_compile_mode(self.compile_mode)
        if (self.data.mixup > 0 or self.data.cutmix > 0) and self.data.batch_size % 2:
            raise ValueError(f"TrainConfig: Mixup/CutMix need an even batch size, got {self.data.batch_size}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warmup from warmup_lr to peak, then cosine decay to min_lr at total_steps."""
    if step < warmup_steps:
        return warmup_lr + (peak - warmup_lr) * step / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch (augmentations, Mixup, drop-path all draw from these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def create_model(cfg: TrainConfig, classes: int) -> torch.nn.Module:
    return timm.create_model(cfg.model, num_classes=classes, img_size=cfg.data.input_size, **cfg.model_kwargs)


def _autocast(cfg: TrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, cfg: TrainConfig, info: DistInfo) -> dict[str, float]:
    """Top-1 / top-5 (%) and mean cross-entropy over the whole val set, summed across ranks."""
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, targets in loader:
        images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
        with _autocast(cfg, info.device):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top1, top5 = accuracy(logits, targets, topk=(1, k))
        n = targets.shape[0]
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct1 += top1.item() * n / 100
        correct5 += top5.item() * n / 100
        count += n
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], info)
    return {"val_loss": loss_sum / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count}


def _checkpoint_path(cfg: TrainConfig) -> str:
    return os.path.join(cfg.out_dir, "last.pth")


def save_checkpoint(path: str, model, optimizer, ema, epoch: int, history, cfg: TrainConfig) -> None:
    """Atomically write everything a resume needs (model, optimizer, EMA, finished epochs, metrics)."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history,
             "config": cfg.to_dict(), "ema": None if ema is None else ema.module.state_dict()}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _check_same_run(saved: dict[str, Any], cfg: TrainConfig, path: str) -> None:
    """Resuming only makes sense for the same model, seed and data; say so instead of failing on a key mismatch."""
    now = cfg.to_dict()
    keys = [("model",), ("model_kwargs",), ("seed",), ("data", "root"), ("data", "input_size")]
    for key in keys:
        old, new = saved, now
        for part in key:
            old, new = old.get(part), new.get(part)
        if old != new:
            raise ValueError(f"{path} belongs to a different run ({'.'.join(key)}: {old!r} there, {new!r} now); "
                             "choose another out_dir or set resume=False")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data.root`; returns the final metrics, per-epoch history and the trained model.

    Launch with `torchrun --nproc_per_node=N` for DDP: each process takes its shard of every epoch (batch_size is
    per process). With `resume`, an existing `out_dir/last.pth` continues the run exactly where it stopped.
    """
    info = init_distributed(cfg.device)
    train_set, val_set = build_datasets(cfg.data)
    classes = num_classes(train_set)
    seed_all(cfg.seed)  # identical initial weights on every rank
    model = create_model(cfg, classes).to(info.device)
    global_batch = cfg.data.batch_size * info.world
    peak_lr = cfg.lr * global_batch / 1024
    optimizer = create_optimizer_v2(model, "adamw", lr=peak_lr, weight_decay=cfg.weight_decay, betas=cfg.betas)
    ema = ModelEmaV3(model, decay=cfg.ema_decay) if cfg.ema_decay else None
    start_epoch, history = 0, []
    path = _checkpoint_path(cfg)
    if cfg.resume and os.path.exists(path):
        state = torch.load(path, map_location=info.device, weights_only=False)
        _check_same_run(state["config"], cfg, path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.module.load_state_dict(state["ema"])
        start_epoch, history = state["epoch"], state["history"]
    net = DistributedDataParallel(model) if info.world > 1 else model
    if cfg.compile:
        net = torch.compile(net, mode=cfg.compile_mode)
    mixup = build_mixup(cfg.data, classes)
    criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(cfg.data.label_smoothing)
    val = eval_loader(val_set, cfg.data, info.rank, info.world)
    steps_per_epoch = len(train_set) // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the train set ({len(train_set)} images) is smaller than one global batch ({global_batch})")
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    if info.is_main:
        os.makedirs(cfg.out_dir, exist_ok=True)
    for epoch in range(start_epoch, min(cfg.epochs, cfg.stop_epoch or cfg.epochs)):
        seed_all(cfg.seed * 1_000_003 + epoch * 101 + info.rank)
        loader = train_loader(train_set, cfg.data, cfg.seed, epoch, info.rank, info.world)
        net.train()
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(loader, desc=f"{cfg.model} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not (cfg.progress and info.is_main))
        for it, (images, targets) in enumerate(bar):
            step = epoch * steps_per_epoch + it
            lr = lr_at(step, total_steps, warmup_steps, peak_lr, cfg.warmup_lr, cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, targets = images.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)
            with _autocast(cfg, info.device):
                loss = criterion(net(images).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            if ema is not None:
                ema.update(model, step=step)
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        loss_sum, seen = all_reduce_sum([loss_sum, float(seen)], info)
        elapsed = time.perf_counter() - started
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen, **evaluate(model, val, cfg, info)}
        if ema is not None:
            row["ema_top1"] = evaluate(ema.module, val, cfg, info)["top1"]
        row.update(epoch_seconds=elapsed, train_img_per_s=seen / elapsed)
        history.append(row)
        if info.is_main:
            save_checkpoint(path, model, optimizer, ema, epoch + 1, history, cfg)
            write_csv(history, os.path.join(cfg.out_dir, "metrics.csv"))
            plot_curves(history, os.path.join(cfg.out_dir, "curves.png"), cfg.model)
            tqdm.write(f"[{cfg.model}] epoch {epoch + 1}: train loss {row['train_loss']:.3f}  val top-1 "
                       f"{row['top1']:.2f}%  top-5 {row['top5']:.2f}%  ({elapsed:.1f}s)")
        barrier(info)
    final = history[-1] if history else {}
    return {"final": final, "history": history, "params": sum(p.numel() for p in model.parameters()),
            "world": info.world, "model": model, "ema": None if ema is None else ema.module}
