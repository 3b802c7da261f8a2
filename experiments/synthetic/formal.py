"""Formal languages with length extrapolation (xLSTM paper, Sec. 4.1 / App. B.1.1): train on short strings, test on
longer ones, and report accuracy scaled to 0 (chance) .. 1 (perfect) per task and model."""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from experiments.synthetic.plots import plot_accuracy_vs_length, plot_scaled_heatmap
from experiments.synthetic.sweep import SweepConfig, evaluate_splits, run_cached
from xlstm_core.baselines import count_parameters
from xlstm_core.tasks import (
    ModelSpec,
    ResultCache,
    TrainConfig,
    build_model,
    check_disjoint,
    fingerprint,
    format_mean_std,
    make_split,
    make_task,
    markdown_table,
    sample_batch,
    save_table,
    train_unless_diverged,
    valid_lengths,
)


@dataclass
class FormalConfig(SweepConfig):
    tasks: list[str] = field(default_factory=lambda: ["parity", "cycle_nav", "mod_arith"])
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[Any] = field(default_factory=lambda: ["xlstm[1:0]", "xlstm[0:1]", "xlstm[1:1]", "transformer",
                                                       "lstm"])
    embedding_dim: int = 32
    num_blocks: int = 2
    num_heads: int = 4
    stack: dict[str, Any] = field(default_factory=lambda: {"slstm_conv_kernel_size": 0})  # paper: no sLSTM conv
    train_lengths: tuple[int, int] = (1, 20)
    test_lengths: tuple[int, int] = (21, 60)
    supervision: str = "prefix"
    lrs: list[float] = field(default_factory=lambda: [1e-2])

    def __post_init__(self) -> None:
        self.train_lengths, self.test_lengths = tuple(self.train_lengths), tuple(self.test_lengths)
        check_disjoint(self.train_lengths, self.test_lengths)
        self.models = [ModelSpec.parse(m) for m in self.models]
        for name in self.tasks:
            make_task(name, **self.task_options.get(name, {}))
        if not self.lrs or not self.seeds:
            raise ValueError("need at least one learning rate and one seed")


def split_seed(task: str, split: str, seed: int) -> int:
    """Seeds of the data streams and evaluation sets: shared by all models, distinct per task, split and seed."""
    return zlib.crc32(f"{task}:{split}:{seed}".encode())


def chance(num_classes: int) -> float:
    return 1.0 / num_classes


def scaled(accuracy: float, num_classes: int) -> float:
    """0 at chance level, 1 at perfect accuracy (the xLSTM paper's scaled accuracy)."""
    return (accuracy - chance(num_classes)) / (1 - chance(num_classes))


def run_one(cfg: FormalConfig, task_name: str, spec: ModelSpec, seed: int, lr: float,
            progress: bool = True) -> dict[str, Any]:
    """Train one model on one task with one seed and learning rate; returns the metrics record."""
    task = make_task(task_name, **cfg.task_options.get(task_name, {}))
    lo, hi = cfg.train_lengths
    train_lengths = valid_lengths(task, lo, hi)
    iid = make_split(task, lo, hi, cfg.val_samples, split_seed(task_name, "iid", seed))
    val = make_split(task, *cfg.test_lengths, cfg.val_samples, split_seed(task_name, "val", seed))
    test = make_split(task, *cfg.test_lengths, cfg.test_samples, split_seed(task_name, "test", seed))
    torch.manual_seed(seed)
    model = build_model(spec.arch, task.vocab_size, cfg.embedding_dim, cfg.num_blocks, cfg.num_heads,
                        stack={**cfg.stack, **spec.stack})
    train_cfg = TrainConfig(**{**cfg.train, "lr": lr})
    rng = np.random.default_rng(split_seed(task_name, "train", seed))
    history, diverged = train_unless_diverged(
        model, lambda step: sample_batch(task, train_lengths, train_cfg.batch_size, rng, cfg.supervision),
        train_cfg, desc=f"{task_name}/{spec.name}/s{seed}/lr{lr:g}", progress=progress)
    evaluations = evaluate_splits(model, {"iid": iid, "val": val, "test": test}, cfg.eval_batch_size,
                                  train_cfg.device, diverged)
    by_length = pd.Series(evaluations["test"].row_accuracy.numpy()).groupby(test.lengths.numpy() - 1).mean()
    C = len(task.classes)
    return {
        "task": task_name, "level": task.level, "model": spec.name, "arch": spec.arch, "seed": seed, "lr": lr,
        "params": count_parameters(model), "num_classes": C, "train_loss": history[-1]["train_loss"],
        "train_seconds": history[-1]["train_seconds"], "diverged": diverged,
        **{f"{name}_acc": result.accuracy for name, result in evaluations.items()},
        "test_scaled": scaled(evaluations["test"].accuracy, C),
        "test_by_length": {int(k): float(v) for k, v in by_length.items()},
    }


def run_formal(cfg: FormalConfig, cache_path: Path | str | None = None, progress: bool = True,
               train_missing: bool = True, shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """All runs (task x model x seed x learning rate), one row each; finished runs are reused from the cache
    (train_missing=False: report the cached runs only; shard=(i, n): every n-th run from the i-th only)."""
    config = fingerprint({k: v for k, v in asdict(cfg).items() if k not in ("tasks", "models", "lrs", "seeds")})
    jobs = [(task, spec, seed, lr) for task in cfg.tasks for spec in cfg.models for seed in cfg.seeds
            for lr in (spec.lrs or cfg.lrs)]
    return run_cached(jobs, lambda job: {"task": job[0], "model": asdict(job[1]), "seed": job[2], "lr": job[3],
                                         "config": config},
                      lambda job: run_one(cfg, *job, progress), ResultCache(cache_path), desc="formal languages",
                      progress=progress, train_missing=train_missing, shard=shard)


def select_best(runs: pd.DataFrame) -> pd.DataFrame:
    """Per task, model and seed, the learning rate with the best validation accuracy (validation strings have the
    test lengths but are sampled independently of the test strings)."""
    best = runs.sort_values(["val_acc", "lr"], ascending=[False, True]).groupby(["task", "model", "seed"]).head(1)
    return best.sort_index()


def summarize(runs: pd.DataFrame, model_order: list[str], task_order: list[str]) -> pd.DataFrame:
    """Scaled test accuracy 'mean ± std' over seeds: tasks as rows, models as columns."""
    best = select_best(runs)
    stats = best.groupby(["task", "model"])["test_scaled"].agg(["mean", "std"])
    table = pd.DataFrame("n/a", index=pd.Index(task_order, name="task"), columns=model_order, dtype=object)
    for (task, model), row in stats.iterrows():
        table.loc[task, model] = format_mean_std(row["mean"], row["std"], 2)
    levels = best.drop_duplicates("task").set_index("task")["level"]
    table.insert(0, "level", [levels.get(t, "n/a") for t in task_order])
    return table


def by_length(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy per string length (selected learning rates, averaged over seeds): task, model, length, acc."""
    rows = [{"task": r.task, "model": r.model, "seed": r.seed, "length": int(length), "accuracy": acc}
            for r in select_best(runs).itertuples() for length, acc in r.test_by_length.items()]  # JSON keys are str
    return pd.DataFrame(rows).groupby(["task", "model", "length"], as_index=False)["accuracy"].mean()


def write_report(runs: pd.DataFrame, cfg: FormalConfig, out_dir: Path | str) -> str:
    """formal_runs.csv (every run), formal_summary.{csv,md}, formal_by_length.csv and two PNGs; returns the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = [spec.name for spec in cfg.models]
    runs.to_csv(out / "formal_runs.csv", index=False)
    table = summarize(runs, models, cfg.tasks)
    (lo, hi), (test_lo, test_hi) = cfg.train_lengths, cfg.test_lengths
    title = (f"Formal languages: scaled test accuracy, trained on lengths {lo}-{hi}, tested on {test_lo}-{test_hi} "
             f"(mean ± std over {len(cfg.seeds)} seed(s))")
    save_table(table, out / "formal_summary", title=title)
    curves = by_length(runs)
    curves.to_csv(out / "formal_by_length.csv", index=False)
    plot_scaled_heatmap(select_best(runs), models, cfg.tasks, out / "formal_scaled_accuracy.png")
    plot_accuracy_vs_length(curves, models, cfg.tasks, cfg.train_lengths[1], out / "formal_accuracy_vs_length.png")
    return markdown_table(table)
