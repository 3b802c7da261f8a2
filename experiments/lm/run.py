"""Language modelling on local text (TFLA paper's claim: mLSTMsig matches mLSTMexp in loss while being faster):
every model sees the same token batches; validation loss curves, final loss and training throughput."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from experiments.lm.plots import plot_curves
from xlstm_core.baselines import count_parameters
from xlstm_core.tasks import (
    CorpusConfig,
    ModelSpec,
    ResultCache,
    TokenCorpus,
    TrainConfig,
    build_model,
    evaluate,
    fingerprint,
    load_corpus,
    markdown_table,
    save_table,
    train,
)


@dataclass
class LMConfig:
    corpus: dict[str, Any] = field(default_factory=dict)
    models: list[Any] = field(default_factory=lambda: [
        {"arch": "xlstm[1:0]", "name": "mLSTMexp", "stack": {"mlstm_variant": "exp"}},
        {"arch": "xlstm[1:0]", "name": "mLSTMsig", "stack": {"mlstm_variant": "sig"}},
        {"arch": "transformer", "name": "Llama"}])
    embedding_dim: int = 128
    num_blocks: int = 2
    num_heads: int = 4
    stack: dict[str, Any] = field(default_factory=dict)
    logit_soft_cap: float | None = 30.0
    seq_len: int = 128
    lrs: list[float] = field(default_factory=lambda: [3e-3])
    seeds: list[int] = field(default_factory=lambda: [0])
    train: dict[str, Any] = field(default_factory=dict)
    val_windows: int = 64
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        self.corpus = asdict(CorpusConfig(**self.corpus)) if not isinstance(self.corpus, CorpusConfig) else \
            asdict(self.corpus)
        self.models = [ModelSpec.parse(m) for m in self.models]
        if self.seq_len < 2 or not self.lrs or not self.seeds:
            raise ValueError("need seq_len >= 2 and at least one learning rate and seed")


def run_one(cfg: LMConfig, corpus: TokenCorpus, spec: ModelSpec, seed: int, lr: float,
            progress: bool = True) -> dict[str, Any]:
    """Train one model; the token stream depends on the seed only, so all models of a seed see the same tokens."""
    torch.manual_seed(seed)
    model = build_model(spec.arch, corpus.vocab_size, cfg.embedding_dim, cfg.num_blocks, cfg.num_heads,
                        stack={**cfg.stack, **spec.stack}, logit_soft_cap=cfg.logit_soft_cap)
    train_cfg = TrainConfig(**{**cfg.train, "lr": lr})
    val = corpus.validation(cfg.val_windows, cfg.seq_len)
    rng = np.random.default_rng(seed)
    history = train(model, lambda step: corpus.sample(train_cfg.batch_size, cfg.seq_len, rng), train_cfg,
                    on_eval=lambda m: {"val_loss": evaluate(m, val, cfg.eval_batch_size, train_cfg.device).loss},
                    desc=f"lm/{spec.name}/s{seed}/lr{lr:g}", progress=progress)
    first, last = (history[0] if len(history) > 1 else {"tokens": 0, "train_seconds": 0.0}), history[-1]
    # throughput after the first evaluation interval, which holds kernel compilation and autotuning
    speed = (last["tokens"] - first["tokens"]) / (last["train_seconds"] - first["train_seconds"])
    return {"model": spec.name, "arch": spec.arch, "seed": seed, "lr": lr, "params": count_parameters(model),
            "val_loss": last["val_loss"], "tokens": last["tokens"], "tokens_per_second": speed, "history": history}


def run_lm(cfg: LMConfig, cache_path: Path | str | None = None, progress: bool = True,
           train_missing: bool = True) -> pd.DataFrame:
    """All runs (model x seed x learning rate), one row each with its history; cached runs are reused
    (train_missing=False: report the cached runs only)."""
    corpus = load_corpus(CorpusConfig(**cfg.corpus))
    cache = ResultCache(cache_path)
    shared = {k: v for k, v in asdict(cfg).items() if k not in ("models", "lrs", "seeds")}
    shared["corpus_key"] = corpus.info["cache_key"]
    jobs = [(spec, seed, lr) for spec in cfg.models for seed in cfg.seeds for lr in (spec.lrs or cfg.lrs)]
    records = []
    for spec, seed, lr in tqdm(jobs, desc="language modelling", disable=not progress):
        key = {"model": asdict(spec), "seed": seed, "lr": lr, "config": fingerprint(shared)}
        record = cache.get(key)
        if record is None and not train_missing:
            continue
        if record is None:
            record = {**run_one(cfg, corpus, spec, seed, lr, progress), "device": _device_name(cfg)}
            cache.put(key, record)
        records.append(record)
    return pd.DataFrame(records)


def _device_name(cfg: LMConfig) -> str:
    device = torch.device(cfg.train.get("device", "cpu"))
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def curves(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluation: model, seed, lr (the run's peak rate), step, step_lr, tokens, train_seconds,
    train_loss, val_loss."""
    rows = [{**h, "step_lr": h["lr"], "model": r.model, "seed": r.seed, "lr": r.lr}
            for r in runs.itertuples() for h in r.history]
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame, model_order: list[str]) -> pd.DataFrame:
    """Per model, at its best learning rate (lowest mean final validation loss over seeds): parameters, final
    validation loss and perplexity, and training throughput."""
    mean_loss = runs.groupby(["model", "lr"])["val_loss"].mean()
    rows = []
    for model in [m for m in model_order if m in set(runs.model)]:
        lr = mean_loss.loc[model].idxmin()
        part = runs[(runs.model == model) & (runs.lr == lr)]
        rows.append({"model": model, "params": int(part.params.iloc[0]), "lr": lr,
                     "val_loss": part.val_loss.mean(), "val_loss_std": part.val_loss.std(ddof=0),
                     "val_ppl": math.exp(part.val_loss.mean()), "tokens": int(part.tokens.iloc[0]),
                     "tokens_per_s": part.tokens_per_second.mean(), "device": part.device.iloc[0]})
    return pd.DataFrame(rows).set_index("model")


def write_report(runs: pd.DataFrame, cfg: LMConfig, out_dir: Path | str) -> str:
    """lm_curves.csv, lm_summary.{csv,md} and lm_val_loss.png; returns the summary table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = [spec.name for spec in cfg.models]
    table = summarize(runs, models)
    history = curves(runs)
    history.to_csv(out / "lm_curves.csv", index=False)
    save_table(table, out / "lm_summary",
               title=f"Language modelling on {Path(CorpusConfig(**cfg.corpus).root_path).name} sources: "
                     f"{cfg.num_blocks} blocks x {cfg.embedding_dim} dims, context {cfg.seq_len}, "
                     f"{len(cfg.seeds)} seed(s)")
    best = history.merge(table["lr"].reset_index(), on=["model", "lr"])
    plot_curves(best, models, out / "lm_val_loss.png")
    return markdown_table(table)
