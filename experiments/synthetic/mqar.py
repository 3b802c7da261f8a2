"""Multi-Query Associative Recall (xLSTM paper, Sec. 4.1 / App. B.1.2): recall accuracy against the number of
key-value pairs for several model widths."""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from experiments.synthetic.plots import plot_mqar
from experiments.synthetic.sweep import SweepConfig, evaluate_splits, run_cached
from xlstm_core.baselines import count_parameters
from xlstm_core.tasks import (
    ModelSpec,
    MQARTask,
    ResultCache,
    TrainConfig,
    build_model,
    fingerprint,
    format_mean_std,
    make_mqar_split,
    markdown_table,
    save_table,
    train_unless_diverged,
)


@dataclass
class MQARConfig(SweepConfig):
    models: list[Any] = field(default_factory=lambda: ["xlstm[1:0]", "xlstm[1:1]", "xlstm[0:1]", "transformer"])
    widths: list[int] = field(default_factory=lambda: [32, 64])
    settings: list[list[int]] = field(default_factory=lambda: [[2, 32], [4, 32], [8, 32]])  # [num_pairs, seq_len]
    vocab_size: int = 128
    num_blocks: int = 2
    num_heads: int = 4
    stack: dict[str, Any] = field(default_factory=dict)
    lrs: list[float] = field(default_factory=lambda: [3e-3])

    def __post_init__(self) -> None:
        self.models = [ModelSpec.parse(m) for m in self.models]
        self.settings = [list(s) for s in self.settings]
        for pairs, seq_len in self.settings:
            MQARTask(pairs, seq_len, self.vocab_size)
        if not (self.widths and self.lrs and self.seeds):
            raise ValueError("need at least one width, learning rate and seed")


def _seed(setting: list[int], split: str, seed: int) -> int:
    return zlib.crc32(f"mqar:{setting}:{split}:{seed}".encode())


def run_one(cfg: MQARConfig, spec: ModelSpec, width: int, setting: list[int], seed: int, lr: float,
            progress: bool = True) -> dict[str, Any]:
    pairs, seq_len = setting
    task = MQARTask(pairs, seq_len, cfg.vocab_size)
    val = make_mqar_split(task, cfg.val_samples, _seed(setting, "val", seed))
    test = make_mqar_split(task, cfg.test_samples, _seed(setting, "test", seed))
    torch.manual_seed(seed)
    model = build_model(spec.arch, cfg.vocab_size, width, cfg.num_blocks, cfg.num_heads,
                        stack={**cfg.stack, **spec.stack})
    train_cfg = TrainConfig(**{**cfg.train, "lr": lr})
    rng = np.random.default_rng(_seed(setting, "train", seed))
    history, diverged = train_unless_diverged(model, lambda step: task.sample(train_cfg.batch_size, rng), train_cfg,
                                              desc=f"mqar/{spec.name}/d{width}/kv{pairs}/s{seed}/lr{lr:g}",
                                              progress=progress)
    results = evaluate_splits(model, {"val": val, "test": test}, cfg.eval_batch_size, train_cfg.device, diverged)
    return {"model": spec.name, "arch": spec.arch, "width": width, "num_pairs": pairs, "seq_len": seq_len,
            "seed": seed, "lr": lr, "params": count_parameters(model), "train_loss": history[-1]["train_loss"],
            "train_seconds": history[-1]["train_seconds"], "diverged": diverged, "val_acc": results["val"].accuracy,
            "test_acc": results["test"].accuracy}


def run_mqar(cfg: MQARConfig, cache_path: Path | str | None = None, progress: bool = True,
             train_missing: bool = True, shard: tuple[int, int] | None = None) -> pd.DataFrame:
    """All runs (model x width x setting x seed x learning rate), one row each; cached runs are reused
    (train_missing=False: report the cached runs only; shard=(i, n): every n-th run from the i-th only)."""
    config = fingerprint({k: v for k, v in asdict(cfg).items()
                          if k not in ("models", "widths", "settings", "lrs", "seeds")})
    jobs = [(spec, width, setting, seed, lr) for setting in cfg.settings for width in cfg.widths
            for spec in cfg.models for seed in cfg.seeds for lr in (spec.lrs or cfg.lrs)]
    return run_cached(jobs, lambda job: {"model": asdict(job[0]), "width": job[1], "setting": job[2], "seed": job[3],
                                         "lr": job[4], "config": config},
                      lambda job: run_one(cfg, *job, progress), ResultCache(cache_path), desc="MQAR",
                      progress=progress, train_missing=train_missing, shard=shard)


def select_best(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model, width, setting and seed, the learning rate with the best validation accuracy."""
    keys = ["model", "width", "num_pairs", "seq_len", "seed"]
    return runs.sort_values(["val_acc", "lr"], ascending=[False, True]).groupby(keys).head(1).sort_index()


def summarize(runs: pd.DataFrame, model_order: list[str]) -> pd.DataFrame:
    """Test recall accuracy 'mean ± std' over seeds: (width, pairs, length) rows, models as columns."""
    stats = select_best(runs).groupby(["width", "num_pairs", "seq_len", "model"])["test_acc"].agg(["mean", "std"])
    text = stats.apply(lambda r: format_mean_std(r["mean"], r["std"], 3), axis=1).unstack("model")
    return text.reindex(columns=[m for m in model_order if m in text.columns])


def write_report(runs: pd.DataFrame, cfg: MQARConfig, out_dir: Path | str) -> str:
    """mqar_runs.csv (every run), mqar_summary.{csv,md} and mqar_accuracy_vs_pairs.png; returns the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = [spec.name for spec in cfg.models]
    runs.to_csv(out / "mqar_runs.csv", index=False)
    table = summarize(runs, models)
    save_table(table, out / "mqar_summary",
               title=f"MQAR: test recall accuracy (vocabulary {cfg.vocab_size}, mean ± std over {len(cfg.seeds)} "
                     f"seed(s))")
    plot_mqar(select_best(runs), models, out / "mqar_accuracy_vs_pairs.png")
    return markdown_table(table)
