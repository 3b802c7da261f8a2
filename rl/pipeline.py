"""End-to-end run: collect datasets -> train LRAM and DT -> evaluate online + sequence-length extrapolation.

Driven by a plain dict (what Hydra composes in `experiments/rl`), so it is testable without Hydra. Every stage
caches: datasets resume per chunk, training resumes from ``last.pt``, and outputs land in ``out_dir``.
"""
from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .data.collect import CollectConfig, collect, dataset_id, minari_root
from .data.loader import MultiTaskSampler, load_task
from .evaluate import bar_plot, context_extrapolation, evaluate_models, markdown_table
from .model import ActionModel, ActionModelConfig
from .ppo import PPOConfig
from .train import TrainConfig, load_checkpoint, resolve_device, train

STAGES = ("data", "train", "eval", "all")


def _build(cls, values: dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; expected a subset of {sorted(known)}")
    return cls(**values)


def _write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def run(cfg: dict, progress: bool = True) -> dict:
    """Run the stages named by ``cfg["stage"]``. Keys: ``tasks``, ``datasets_dir``, ``out_dir``, ``extra_datasets``
    (local Minari ids or paths to add to training), ``collect`` / ``ppo`` / ``model`` / ``train`` (dataclass
    fields), ``backbones``, ``eval`` (``episodes``, ``num_envs``, ``factors``, ``batches``). Returns the results."""
    stage = cfg.get("stage", "all")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    torch.set_num_threads(int(cfg.get("threads", torch.get_num_threads())))
    out_dir, data_dir = Path(cfg["out_dir"]), Path(cfg["datasets_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    collect_cfg = _build(CollectConfig, {**cfg.get("collect", {}), "ppo": _build(PPOConfig, cfg.get("ppo", {}))})
    if stage in ("data", "all"):
        results["datasets"] = collect(list(cfg["tasks"]), data_dir, collect_cfg, progress)
        _write_csv(results["datasets"], out_dir / "datasets.csv")
        if stage == "data":
            return results
    with minari_root(data_dir):
        tasks = [load_task(dataset_id(t)) for t in cfg["tasks"]]
    tasks += [load_task(source) for source in cfg.get("extra_datasets", [])]
    train_cfg = _build(TrainConfig, dict(cfg.get("train", {})))
    device = resolve_device(train_cfg.device)
    checkpoints = {}
    for backbone in cfg.get("backbones", ["lram", "dt"]):
        model_cfg = _build(ActionModelConfig, {**cfg.get("model", {}), "backbone": backbone})
        run_dir = out_dir / backbone
        if stage in ("train", "all"):
            checkpoints[backbone] = train(model_cfg, train_cfg, tasks, run_dir, progress)
        else:
            checkpoints[backbone] = run_dir / "last.pt"
    if stage == "train":
        return results
    models: dict[str, ActionModel] = {}
    for backbone, path in checkpoints.items():
        models[backbone], _, _ = load_checkpoint(path, device)
        results[f"params_{backbone}"] = sum(p.numel() for p in models[backbone].backbone.parameters())
    ev = dict(cfg.get("eval", {}))
    rows = evaluate_models(models, [t.info for t in tasks if t.info.env_id], ev.get("episodes", 4),
                           ev.get("num_envs", 4), ev.get("seed", 0), window=train_cfg.context, device=device,
                           progress=progress)
    _write_csv(rows, out_dir / "eval.csv")
    (out_dir / "eval.md").write_text(markdown_table(rows))
    bar_plot(rows, out_dir / "scores.png")
    results["eval"] = rows
    model_cfg = next(iter(models.values())).cfg
    sampler = MultiTaskSampler(tasks, train_cfg.context, model_cfg.max_obs_dim, model_cfg.max_action_dims,
                               model_cfg.num_bins)
    extrapolation = []
    for name, model in models.items():
        for row in context_extrapolation(model, sampler, tuple(ev.get("factors", (1, 2, 4, 8))),
                                         ev.get("batches", 4), device=device):
            extrapolation.append({"model": name, **row})
    _write_csv(extrapolation, out_dir / "extrapolation.csv")
    results["extrapolation"] = extrapolation
    return results
