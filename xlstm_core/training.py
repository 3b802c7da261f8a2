"""A small, resumable language-model training loop (AdamW, warmup + cosine, clipping, periodic eval)."""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xlstm_core.optim import warmup_cosine, weight_decay_groups


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_batches: int = 4
    seed: int = 0


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_ratio."""
    return warmup_cosine(step, cfg.steps, cfg.warmup_steps, cfg.min_lr_ratio)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases, gate biases or 1-D scales)."""
    return torch.optim.AdamW(weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def evaluate(model, corpus, cfg: TrainConfig, device) -> float:
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed + 1)  # the same validation windows at every evaluation
    losses = []
    for _ in range(cfg.eval_batches):
        x, y = corpus.batch("val", cfg.batch_size, cfg.seq_len, g)
        logits = model(x.to(device))
        losses.append(F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return sum(losses) / len(losses)


def train_lm(model, corpus, cfg: TrainConfig, out_dir: str | Path, device: str | torch.device = "cpu",
             resume: bool = True) -> list[dict]:
    """Train next-token prediction; returns the history [{step, train_loss, val_loss, lr}].

    Writes `train_state.pt` (model, optimizer, step, history, RNG) at every evaluation and resumes from it when
    present, so an interrupted run continues where it stopped; `metrics.csv` holds the history.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "train_state.pt"
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    start, history, running = 0, [], None
    if resume and state_path.exists():
        saved = torch.load(state_path, map_location=device, weights_only=False)
        if saved["config"] != asdict(cfg):
            raise ValueError(f"{state_path} was written with another training config; use a new out_dir")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        g.set_state(saved["rng"])
        start, history, running = saved["step"], saved["history"], saved["running_loss"]
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train", unit="step")
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, cfg)
        x, y = corpus.batch("train", cfg.batch_size, cfg.seq_len, g)
        logits = model(x.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        bar.set_postfix(loss=f"{running:.3f}")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            history.append({"step": step + 1, "train_loss": running, "val_loss": evaluate(model, corpus, cfg, device),
                            "lr": optimizer.param_groups[0]["lr"]})
            bar.write(f"step {step + 1}: train {running:.3f}  val {history[-1]['val_loss']:.3f} nats/byte")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": g.get_state(),
                        "step": step + 1, "history": history, "running_loss": running,
                        "config": asdict(cfg)}, state_path)
    write_metrics(history, out_dir / "metrics.csv")
    return history


def write_metrics(history: list[dict], path: Path) -> None:
    if not history:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
