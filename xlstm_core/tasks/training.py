"""Training and evaluation of `model(tokens) -> logits` models on TaskBatches: AdamW, warm-up + cosine schedule,
loss and accuracy at the scored positions only."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from xlstm_core.optim import warmup_cosine, weight_decay_groups
from xlstm_core.tasks.batch import IGNORE, TaskBatch


@dataclass
class TrainConfig:
    """Optimisation settings (defaults follow the xLSTM paper's synthetic tasks: AdamW (0.9, 0.99), weight decay
    0.1, 10% linear warm-up, cosine decay to min_lr)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 0  # 0: evaluate only after the last step
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be positive, got {self.steps}, {self.batch_size}")
        if not (0 < self.min_lr <= self.lr) or not 0 <= self.warmup < 1:
            raise ValueError(f"need 0 < min_lr <= lr and 0 <= warmup < 1, got lr={self.lr}, min_lr={self.min_lr}, "
                             f"warmup={self.warmup}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine decay from lr to min_lr."""
    return cfg.lr * warmup_cosine(step, cfg.steps, max(1, int(cfg.warmup * cfg.steps)), cfg.min_lr / cfg.lr)


def scored_logits(model: nn.Module, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (M, C) and targets (M,) at the M scored positions, restricted to the candidate tokens if the batch
    has them, and the row index (M,) of each scored position."""
    logits = model(batch.tokens)
    mask = batch.targets != IGNORE
    picked = logits[mask]
    if batch.candidates is not None:
        picked = picked[:, batch.candidates]
    return picked, batch.targets[mask], mask.nonzero()[:, 0]


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    row_accuracy: torch.Tensor  # (N,) fraction of each row's scored positions that were right

    @classmethod
    def of_diverged_run(cls, rows: int) -> EvalResult:
        """NaN everywhere: the result of a run whose training loss became non-finite (it has no usable model)."""
        return cls(math.nan, math.nan, torch.full((rows,), math.nan))


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskBatch, batch_size: int = 256, device: str = "cpu") -> EvalResult:
    """Mean loss and accuracy over all scored positions of `data`, in chunks of batch_size rows."""
    was_training = model.training
    model.eval()
    loss_sum, correct_sum, count = 0.0, 0, 0
    row_accuracy = torch.zeros(len(data))
    for start in range(0, len(data), batch_size):
        part = data.slice(start, min(start + batch_size, len(data))).to(device)
        logits, targets, rows = scored_logits(model, part)
        loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        correct = (logits.argmax(-1) == targets).float().cpu()
        rows = rows.cpu()
        per_row = torch.zeros(len(part)).index_add_(0, rows, correct)
        row_accuracy[start : start + len(part)] = per_row / torch.bincount(rows, minlength=len(part)).clamp(min=1)
        correct_sum += int(correct.sum())
        count += len(targets)
    model.train(was_training)
    if count == 0:
        raise ValueError("the evaluation data has no scored positions")
    return EvalResult(loss_sum / count, correct_sum / count, row_accuracy)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (dim >= 2) only, not on norms, biases or gate biases."""
    return torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def train(model: nn.Module, next_batch: Callable[[int], TaskBatch], cfg: TrainConfig,
          on_eval: Callable[[nn.Module], dict[str, float]] | None = None, desc: str = "train",
          progress: bool = True) -> list[dict[str, float]]:
    """Train for cfg.steps steps on `next_batch(step)`; call `on_eval(model)` every cfg.eval_every steps and after
    the last one. Returns one history row per evaluation: step, mean train loss since the last row, lr, tokens seen,
    training seconds (evaluation excluded) and whatever on_eval returned."""
    model.to(cfg.device).train()
    optimizer = make_optimizer(model, cfg)
    history: list[dict[str, float]] = []
    loss_sum, loss_count, tokens, train_time = 0.0, 0, 0, 0.0
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, leave=False)
    for step in bar:
        start = time.perf_counter()
        batch = next_batch(step).to(cfg.device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        logits, targets, _ = scored_logits(model, batch)
        loss = F.cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: non-finite loss at step {step}")
        loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
        tokens += int(batch.lengths.sum())
        train_time += time.perf_counter() - start
        last = step == cfg.steps - 1
        if last or (cfg.eval_every and (step + 1) % cfg.eval_every == 0):
            row = {"step": step + 1, "train_loss": loss_sum / loss_count, "lr": learning_rate(step, cfg),
                   "tokens": tokens, "train_seconds": train_time}
            if on_eval is not None:
                row.update(on_eval(model))
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}")
            loss_sum, loss_count = 0.0, 0
    return history


def train_unless_diverged(model: nn.Module, next_batch: Callable[[int], TaskBatch], cfg: TrainConfig,
                          desc: str = "train", progress: bool = True) -> tuple[list[dict[str, float]], str]:
    """`train`, where a non-finite loss ends this run rather than the whole sweep around it.

    Returns (history, "") or, for a diverged run, ([{train_loss: nan, train_seconds: nan}], the error message).
    """
    try:
        return train(model, next_batch, cfg, desc=desc, progress=progress), ""
    except FloatingPointError as error:
        return [{"train_loss": math.nan, "train_seconds": math.nan}], str(error)
