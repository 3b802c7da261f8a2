"""Figures of the synthetic experiments (matplotlib, Agg backend)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def _grid(count: int, width: float = 4.0, height: float = 3.0):
    cols = min(count, 3)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_scaled_heatmap(best: pd.DataFrame, models: list[str], tasks: list[str], path: Path) -> None:
    """Mean scaled test accuracy per task (rows) and model (columns), as in the xLSTM paper's Figure 4."""
    values = best.groupby(["task", "model"])["test_scaled"].mean().unstack().reindex(index=tasks, columns=models)
    fig, ax = plt.subplots(figsize=(1.3 * len(models) + 2, 0.5 * len(tasks) + 1.5))
    image = ax.imshow(values.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values.to_numpy(dtype=float)):
        ax.text(j, i, "" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_title("scaled accuracy on longer test strings (0 = chance, 1 = perfect)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy_vs_length(curves: pd.DataFrame, models: list[str], tasks: list[str], train_max: int,
                            path: Path) -> None:
    """Test accuracy against string length, one panel per task; the dashed line marks the longest training length."""
    fig, axes = _grid(len(tasks))
    for ax, task in zip(axes, tasks):
        part = curves[curves.task == task]
        for model in models:
            line = part[part.model == model].sort_values("length")
            if len(line):  # smooth over neighbouring lengths: each length has only a few test strings
                ax.plot(line.length, line.accuracy.rolling(5, center=True, min_periods=1).mean(), label=model)
        ax.axvline(train_max, color="grey", linestyle="--", linewidth=1)
        ax.set(title=task, xlabel="string length", ylabel="test accuracy", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_mqar(best: pd.DataFrame, models: list[str], path: Path) -> None:
    """MQAR accuracy against the number of key-value pairs, one panel per model width."""
    widths = sorted(best.width.unique())
    fig, axes = _grid(len(widths))
    for ax, width in zip(axes, widths):
        part = best[best.width == width].groupby(["model", "num_pairs"])["test_acc"].mean()
        for model in models:
            if model in part.index.get_level_values(0):
                series = part.loc[model]
                ax.plot(series.index, series.to_numpy(), marker="o", label=model)
        ax.set_xscale("log", base=2)
        ax.set(title=f"model width {width}", xlabel="key-value pairs", ylabel="recall accuracy", ylim=(0, 1.02))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
