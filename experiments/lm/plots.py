"""Validation-loss curves of the language-modelling comparison (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


def plot_curves(history: pd.DataFrame, models: list[str], path: Path) -> None:
    """Validation loss against training tokens (left) and training wall-clock seconds (right), mean over seeds."""
    fig, (by_tokens, by_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for model in models:
        part = history[history.model == model].groupby("step")[["tokens", "train_seconds", "val_loss"]].mean()
        if len(part):
            by_tokens.plot(part.tokens, part.val_loss, marker=".", label=model)
            by_time.plot(part.train_seconds, part.val_loss, marker=".", label=model)
    by_tokens.set(xlabel="training tokens", ylabel="validation loss (nats/token)")
    by_time.set(xlabel="training seconds (evaluation excluded)", ylabel="validation loss (nats/token)")
    by_tokens.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
