"""Offline training of an `ActionModel` on task-balanced cross-domain batches.

bf16 autocast on CUDA, DDP when launched by torchrun (``WORLD_SIZE`` > 1; each rank samples its own batches),
checkpoint + resume from ``out_dir/last.pt``, tqdm progress, and a metrics CSV (``out_dir/metrics.csv``).
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from xlstm_core.optim import warmup_cosine, weight_decay_groups

from .data.loader import MultiTaskSampler, TaskData, TaskInfo
from .model import ActionModel, ActionModelConfig


@dataclass
class TrainConfig:
    """Optimisation settings (AdamW, linear warm-up then cosine decay)."""

    steps: int = 1000
    batch_size: int = 32
    context: int = 50
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup: int = 50
    grad_clip: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 250
    seed: int = 0
    device: str = "auto"


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> the local CUDA device when there is one (per torchrun rank), else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def save_checkpoint(path: Path, model: ActionModel, tasks: list[TaskInfo], extra: dict | None = None) -> None:
    """Everything needed to rebuild the model and evaluate it: weights, model config, task infos."""
    payload = {"model": model.state_dict(), "model_cfg": model.cfg.to_dict(),
               "tasks": [t.to_dict() for t in tasks], **(extra or {})}
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a broken checkpoint


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[ActionModel, list[TaskInfo], dict]:
    """(model in eval mode, task infos, raw payload) from a checkpoint written by `train`."""
    payload = torch.load(path, map_location=device, weights_only=False)
    model = ActionModel(ActionModelConfig(**payload["model_cfg"])).to(device)
    model.load_state_dict(payload["model"])
    return model.eval(), [TaskInfo(**t) for t in payload["tasks"]], payload


def train(model_cfg: ActionModelConfig, cfg: TrainConfig, tasks: list[TaskData], out_dir: str | Path,
          progress: bool = True) -> Path:
    """Train (or resume training) and return the path of the final checkpoint ``out_dir/last.pt``."""
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps}, {cfg.batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    device = resolve_device(cfg.device)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if distributed else 0
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    model = ActionModel(model_cfg).to(device)
    opt = torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay, skip=("embed",)), lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, cfg.steps, cfg.warmup, 0.1))
    sampler = MultiTaskSampler(tasks, cfg.context, model_cfg.max_obs_dim, model_cfg.max_action_dims,
                               model_cfg.num_bins, seed=cfg.seed + 1000 * rank)
    infos = [t.info for t in tasks]
    last, start = out_dir / "last.pt", 0
    if last.exists():
        payload = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optim"])
        sched.load_state_dict(payload["sched"])
        if rank < len(payload["sampler_rng"]):
            sampler.rng.bit_generator.state = payload["sampler_rng"][rank]
        start = payload["step"]
    # find_unused_parameters: a task-balanced batch may hold no pixel task, leaving the image encoder without grads
    net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                                    find_unused_parameters=True) if distributed else model
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    metrics_path = out_dir / "metrics.csv"
    writer_file = open(metrics_path, "a", newline="") if rank == 0 else None
    writer = csv.DictWriter(writer_file, ["step", "loss", "accuracy", "lr", "seconds"]) if writer_file else None
    if writer and metrics_path.stat().st_size == 0:
        writer.writeheader()

    def checkpoint(step: int) -> None:
        states = [sampler.rng.bit_generator.state]
        if distributed:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, states[0])
            states = gathered
        if rank == 0:
            save_checkpoint(last, model, infos, {"optim": opt.state_dict(), "sched": sched.state_dict(),
                                                 "step": step, "sampler_rng": states, "train_cfg": asdict(cfg)})

    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"train {model_cfg.backbone}",
               disable=not progress or rank != 0)
    t0, running = time.time(), []
    for step in bar:
        batch = to_device(sampler.sample(cfg.batch_size), device)
        with amp:
            logits = net(batch)
        loss, stats = model.loss(batch, logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        running.append(stats)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            row = {k: sum(r[k] for r in running) / len(running) for k in ("loss", "accuracy")}
            row.update(step=step + 1, lr=sched.get_last_lr()[0], seconds=round(time.time() - t0, 2))
            running = []
            if writer:
                writer.writerow(row)
                writer_file.flush()
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            checkpoint(step + 1)
    if writer_file:
        writer_file.close()
    if distributed:
        dist.barrier()
    return last
