"""Train several models with one recipe over several seeds and report top-1 as a table (CSV + Markdown) and a plot."""
from __future__ import annotations

import dataclasses
import os
import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from vision.metrics import write_csv
from vision.train import TrainConfig, train


def compare(base: TrainConfig, contenders: dict[str, dict[str, Any]], seeds: list[int], out_dir: str
            ) -> list[dict[str, Any]]:
    """Run `train` for every contender ({label: {"model": timm name, "model_kwargs": {...}}}) and seed.

    Each run writes its own checkpoint/metrics under out_dir/<label>/seed<k> (so an interrupted comparison resumes);
    returns one row per run with final and best val top-1.
    """
    if not contenders or not seeds:
        raise ValueError("compare needs at least one contender and one seed")
    rows, curves = [], {}
    for label, spec in contenders.items():
        for seed in seeds:
            cfg = dataclasses.replace(base, model=spec["model"], model_kwargs=dict(spec.get("model_kwargs", {})),
                                      seed=seed, out_dir=os.path.join(out_dir, label, f"seed{seed}"))
            result = train(cfg)
            history = result["history"]
            curves.setdefault(label, []).append([row["top1"] for row in history])
            rows.append({"model": label, "timm_name": spec["model"], "seed": seed, "params": result["params"],
                         "top1": history[-1]["top1"], "best_top1": max(row["top1"] for row in history),
                         "top5": history[-1]["top5"],
                         "train_img_per_s": statistics.mean(row["train_img_per_s"] for row in history)})
    if int(os.environ.get("RANK", "0")) == 0:
        write_report(rows, curves, out_dir)
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (sample) standard deviation of final top-1 per model."""
    out = []
    for label in dict.fromkeys(row["model"] for row in rows):
        runs = [row for row in rows if row["model"] == label]
        top1 = [row["top1"] for row in runs]
        out.append({"model": label, "params": runs[0]["params"], "seeds": len(runs),
                    "top1_mean": statistics.mean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                    "best_top1_mean": statistics.mean(row["best_top1"] for row in runs),
                    "train_img_per_s": statistics.mean(row["train_img_per_s"] for row in runs)})
    return out


def markdown_table(summary: list[dict[str, Any]]) -> str:
    lines = ["| model | params | seeds | final top-1 (%) | best top-1 (%) | train img/s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in summary:
        lines.append(f"| {s['model']} | {s['params']:,} | {s['seeds']} | {s['top1_mean']:.2f} ± {s['top1_std']:.2f} "
                     f"| {s['best_top1_mean']:.2f} | {s['train_img_per_s']:.0f} |")
    return "\n".join(lines)


def write_report(rows: list[dict[str, Any]], curves: dict[str, list[list[float]]], out_dir: str) -> None:
    """results.csv (per run), results.md (mean ± std per model) and comparison.png (val top-1, mean ± std band)."""
    os.makedirs(out_dir, exist_ok=True)
    write_csv(rows, os.path.join(out_dir, "results.csv"))
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown_table(summarize(rows)) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, runs in curves.items():
        length = min(len(r) for r in runs)
        values = np.array([r[:length] for r in runs])
        epochs = np.arange(1, length + 1)
        mean, std = values.mean(0), values.std(0)
        ax.plot(epochs, mean, label=f"{label} (n={len(runs)})")
        ax.fill_between(epochs, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="same recipe, equal parameters")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "comparison.png"), dpi=100)
    plt.close(fig)
