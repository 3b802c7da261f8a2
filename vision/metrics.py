"""Per-epoch metrics on disk: a CSV (rewritten from the full history, so a resumed run stays consistent) and a
loss / accuracy curve PNG."""
from __future__ import annotations

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def write_csv(history: list[dict[str, float]], path: str) -> None:
    if not history:
        return
    fields = list(history[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(history)


def read_csv(path: str) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_curves(history: list[dict[str, float]], path: str, title: str = "") -> None:
    """Train / val loss and val top-1 (and EMA top-1 when logged) against epoch."""
    if not history:
        return
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], label="train")
    ax_loss.plot(epochs, [row["val_loss"] for row in history], label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [row["top1"] for row in history], label="top-1")
    if "ema_top1" in history[0]:
        ax_acc.plot(epochs, [row["ema_top1"] for row in history], label="EMA top-1")
    ax_acc.set(xlabel="epoch", ylabel="val accuracy (%)")
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
