"""The comparison: candidates -> importance weights -> every selector, over datasets, scenarios, methods and seeds."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from joblib import Parallel, delayed
from tqdm.auto import tqdm

from .backbones import BackboneConfig
from .candidates import candidate_predictions, config_tag, save_npz_atomic
from .data.scenarios import DatasetConfig, build_scenarios
from .data.splits import Scenario, holdout_halves
from .selectors import SourceOnly, TargetOracle, make_selector
from .training import TrainConfig
from .weighting import ImportanceWeighter, WeighterConfig

LAMBDA_GRID = [0.0, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0]


@dataclass
class DatasetSpec:
    """A dataset with the backbone its candidates and (neural) domain classifier use."""

    data: DatasetConfig = field(default_factory=DatasetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)


@dataclass
class ExperimentConfig:
    datasets: list[DatasetSpec] = field(default_factory=lambda: [DatasetSpec()])
    methods: list[str] = field(default_factory=lambda: ["DANN", "CORAL", "MMD", "CMD", "HoMM", "DSAN"])
    lambdas: list[float] = field(default_factory=lambda: list(LAMBDA_GRID))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    train: TrainConfig = field(default_factory=TrainConfig)
    weighter: WeighterConfig = field(default_factory=WeighterConfig)
    selectors: dict[str, dict] = field(default_factory=lambda: {
        "IWA": {}, "IWV": {}, "DEV": {}, "SOR": {}, "TMR": {}, "TCR": {}, "TMV": {}})
    cache_dir: str = "outputs/adaptation/cache"
    progress: bool = True
    n_jobs: int = 1
    threads: int = 1


def _weights(scenario: Scenario, spec: DatasetSpec, cfg: ExperimentConfig, seed: int, tag: str) -> np.ndarray:
    """Importance weights of the held-out source points from a domain classifier trained on the (unlabelled)
    training inputs of both domains; cached like the candidates."""
    wcfg = replace(cfg.weighter, backbone=spec.backbone, train=replace(cfg.weighter.train, device=cfg.train.device))
    path = (Path(cfg.cache_dir) / scenario.dataset / scenario.name.replace("->", "_to_")
            / f"{tag}-{config_tag(wcfg)}" / f"weights_seed{seed}.npz")
    if path.exists():
        with np.load(path) as f:
            return f["weights"]
    weighter = ImportanceWeighter(wcfg, seed=seed).fit(scenario.source.x_train, scenario.target.x_train)
    w = weighter.predict(scenario.source.x_val)
    save_npz_atomic(path, weights=w)
    return w


def evaluate_selectors(preds: dict[str, np.ndarray], scenario: Scenario, weights: np.ndarray, seed: int,
                       selectors: dict[str, dict], source_only_index: int) -> list[dict]:
    """Fit every selector on the fit halves of the held-out sets; score it on the target test set, and give its
    importance-weighted accuracy on the source evaluation half (the estimate available without target labels)."""
    src_fit, src_eval = holdout_halves(len(scenario.source.y_val), seed)
    tgt_fit, _ = holdout_halves(len(scenario.target.y_val), seed + 1)
    y_val, y_test = scenario.source.y_val, scenario.target.y_test
    fitted = {name: make_selector(name, **kw).fit(preds["source_val"][:, src_fit], y_val[src_fit],
                                                  preds["target_val"][:, tgt_fit], weights[src_fit])
              for name, kw in selectors.items()}
    fitted["SourceOnly"] = SourceOnly(source_only_index).fit(preds["source_val"], y_val, preds["target_val"])
    fitted["TargetOracle"] = TargetOracle().fit(preds["target_test"], y_test)
    rows = []
    for name, sel in fitted.items():
        correct = sel.predict(preds["source_val"][:, src_eval]) == y_val[src_eval]
        w_eval = weights[src_eval]
        rows.append({"selector": name, "target_acc": sel.score(preds["target_test"], y_test),
                     "iw_estimate": float((w_eval * correct).sum() / w_eval.sum())})
    return rows


def _train_job(spec: DatasetSpec, scenario: Scenario, seed: int, method: str, cfg: ExperimentConfig) -> None:
    """Fill the cache for one (scenario, seed, method): the weights and all candidates of the lambda grid."""
    torch.set_num_threads(cfg.threads)
    # Products of small features (HoMM, kernels) produce denormals, which are very slow on x86 CPUs.
    torch.set_flush_denormal(True)
    tag = config_tag(spec, cfg.train)
    _weights(scenario, spec, cfg, seed, tag)
    candidate_predictions(scenario, method, cfg.lambdas, seed, spec.backbone, cfg.train, cfg.cache_dir, tag)


def run_experiment(cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per (dataset, scenario, DA method, seed, selector) with the target test accuracy.

    Candidates are trained first (``n_jobs`` worker processes, resumable through the cache), then every selector is
    evaluated from the cached predictions.
    """
    if 0.0 not in cfg.lambdas:
        raise ValueError("lambdas: expected the grid to contain 0 (the source-only reference candidate)")
    plan = [(spec, sc) for spec in cfg.datasets for sc in build_scenarios(spec.data)]
    jobs = [(spec, sc, seed, method) for spec, sc in plan for seed in cfg.seeds for method in cfg.methods]
    # Source-only candidates are shared by all methods: the first wave trains them (one job per scenario and seed)
    # so that parallel jobs never write the same cache entry.
    head = {}
    for i, (_, sc, seed, _) in enumerate(jobs):
        head.setdefault((id(sc), seed), i)
    waves = [[jobs[i] for i in head.values()], [j for i, j in enumerate(jobs) if i not in set(head.values())]]
    with (tqdm(total=len(jobs), desc="candidate grids", disable=not cfg.progress) as bar,
          Parallel(n_jobs=cfg.n_jobs, return_as="generator_unordered") as parallel):
        for wave in waves:
            for _ in parallel(delayed(_train_job)(*job, cfg) for job in wave):
                bar.update()
    rows = []
    for spec, scenario in plan:
        tag = config_tag(spec, cfg.train)
        for seed in cfg.seeds:
            weights = _weights(scenario, spec, cfg, seed, tag)
            for method in cfg.methods:
                preds = candidate_predictions(scenario, method, cfg.lambdas, seed, spec.backbone, cfg.train,
                                              cfg.cache_dir, tag)
                for row in evaluate_selectors(preds, scenario, weights, seed, cfg.selectors, cfg.lambdas.index(0.0)):
                    rows.append({"dataset": scenario.dataset, "scenario": scenario.name, "method": method,
                                 "seed": seed, **row})
    return pd.DataFrame(rows)


def experiment_config(raw: dict) -> ExperimentConfig:
    """ExperimentConfig from a plain nested dict (e.g. a resolved Hydra/OmegaConf config); unknown keys raise."""
    raw = dict(raw)
    datasets = [DatasetSpec(DatasetConfig(**{k: (tuple(v) if k == "sizes" else v) for k, v in d["data"].items()}),
                            BackboneConfig(**d.get("backbone", {})))
                for d in raw.pop("datasets")]
    train = TrainConfig(**raw.pop("train", {}))
    wraw = dict(raw.pop("weighter", {}))
    weighter = WeighterConfig(**{**wraw, "train": TrainConfig(**wraw.get("train", {}))})
    selectors = {k: dict(v or {}) for k, v in raw.pop("selectors", ExperimentConfig().selectors).items()}
    return ExperimentConfig(datasets=datasets, train=train, weighter=weighter, selectors=selectors, **raw)
