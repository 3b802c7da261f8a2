"""One benchmark end to end: generate tasks, pre-train θ0, collect fine-tuning updates, fit the subspace,
meta-train the baselines, tune every method on validation tasks, evaluate on test tasks over support sizes
and seeds. Every stage is cached under ``<out_dir>/cache`` keyed by the configuration it depends on, and
finished (method, support size, seed) results are appended to ``per_task.csv``, so a rerun resumes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from .adapt import adapt_and_evaluate
from .functional import FlatModel
from .meta import MetaConfig, meta_train
from .methods import META, SUBGD_VARIANTS, build_method, check_methods, subgd_subspace
from .metrics import Metric
from .models import build_model
from .search import grid_search
from .tasks import build_family, make_tasks, sample_supports, stack_pool
from .training import TrainConfig, collect_updates, pretrain


RESULT_COLUMNS = ["run", "seed", "method", "support_size", "task", "value", "lr", "steps", "val_score"]


@dataclass
class BenchmarkConfig:
    """Everything one benchmark run needs; Hydra composes it from ``experiments/fewshot/conf``."""

    name: str
    family: dict[str, Any]
    model: dict[str, Any]
    metric: dict[str, Any]
    support_sizes: list[int]
    methods: list[str]
    grid: dict[str, Any]
    n_train_tasks: int = 100
    n_val_tasks: int = 20
    n_test_tasks: int = 100
    seeds: list[int] = field(default_factory=lambda: [0])
    pretrain_on: str = "nominal"
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    topk: int = 10
    vectorize: bool = True
    eval_chunk: int = 100
    out_dir: str = "outputs/fewshot"
    progress: bool = True

    def __post_init__(self):
        check_methods(list(self.methods))
        if self.pretrain_on not in ("nominal", "train"):
            raise ValueError(f"pretrain_on must be 'nominal' or 'train', got {self.pretrain_on!r}")
        if not self.support_sizes or min(self.support_sizes) < 1:
            raise ValueError(f"support_sizes must be positive integers, got {self.support_sizes}")
        if not {"lrs", "steps"} <= set(self.grid):
            raise ValueError(f"grid needs 'lrs' (per grid family) and 'steps', got keys {sorted(self.grid)}")


def _key(*parts: Any) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class _Cache:
    """Torch-serialised artefacts named ``<stage>-<hash of what they depend on>.pt``."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def __call__(self, stage: str, deps: Any, make: Callable[[], Any]) -> Any:
        path = self.root / f"{stage}-{_key(deps)}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        value = make()
        tmp = path.with_suffix(".tmp")
        torch.save(value, tmp)
        tmp.replace(path)
        return value


def _evaluate(fm, method, tasks, k, seed, lr, steps, metric, chunk) -> torch.Tensor:
    vals = []
    for i in range(0, len(tasks), chunk):
        part = tasks[i : i + chunk]
        support = sample_supports(part, k, seed=seed)
        vals.append(adapt_and_evaluate(fm, method.theta, support, stack_pool(part, "test"), method.rule,
                                       lr or 1.0, [steps], metric)[steps])
    return torch.cat(vals)


def run_benchmark(cfg: BenchmarkConfig) -> pd.DataFrame:
    """Run (or resume) the benchmark; returns the per-task results of this configuration."""
    out = Path(cfg.out_dir)
    cache = _Cache(out / "cache")
    metric = Metric(**cfg.metric)
    run_id = _key({k: v for k, v in asdict(cfg).items() if k not in ("methods", "seeds", "progress", "out_dir")})
    results_path = out / "per_task.csv"
    done = pd.read_csv(results_path) if results_path.exists() else pd.DataFrame(columns=RESULT_COLUMNS)
    done = done[done["run"] == run_id]
    for seed in cfg.seeds:
        family_cfg = {**cfg.family, "seed": seed}
        family = build_family(**family_cfg)
        sizes = {"train": cfg.n_train_tasks, "val": cfg.n_val_tasks, "test": cfg.n_test_tasks}
        tasks = {s: cache(f"tasks_{s}", (family_cfg, n), lambda s=s, n=n: make_tasks(family, s, n)) for s, n in sizes.items()}
        torch.manual_seed(seed)
        fm = FlatModel(build_model(**cfg.model), vectorize=cfg.vectorize)
        init = fm.flatten()
        pre_tasks = [family.nominal_task()] if cfg.pretrain_on == "nominal" else tasks["train"]
        pre_deps = (family_cfg, sizes, cfg.model, cfg.pretrain, cfg.pretrain_on, seed)
        theta0 = cache("theta0", pre_deps, lambda: pretrain(fm, pre_tasks, TrainConfig(**{**cfg.pretrain, "seed": seed})))
        upd_deps = (pre_deps, cfg.finetune)
        updates = cache("updates", upd_deps, lambda: collect_updates(
            fm, theta0, tasks["train"], TrainConfig(**{**cfg.finetune, "seed": seed}), cfg.progress))
        for name in cfg.methods:
            subspace = subgd_subspace(name, updates, cfg.topk, seed) if name in SUBGD_VARIANTS else None
            for k in cfg.support_sizes:
                if ((done["seed"] == seed) & (done["method"] == name) & (done["support_size"] == k)).any():
                    continue
                meta = None
                if name in META:
                    meta = cache(f"meta_{name}_k{k}", (pre_deps, cfg.meta, k), lambda: meta_train(
                        fm, init, tasks["train"], name, k, MetaConfig(**{**cfg.meta, "seed": seed}), cfg.progress))
                method = build_method(name, theta0, subspace, meta)
                val_support = sample_supports(tasks["val"], k, seed=10_000 + seed)
                choice = grid_search(fm, method, val_support, stack_pool(tasks["val"], "test"),
                                     cfg.grid["lrs"].get(method.grid, []), cfg.grid["steps"], metric)
                values = _evaluate(fm, method, tasks["test"], k, seed, choice.lr, choice.steps, metric, cfg.eval_chunk)
                rows = pd.DataFrame({"run": run_id, "seed": seed, "method": name, "support_size": k,
                                     "task": range(len(values)), "value": values.numpy(), "lr": choice.lr,
                                     "steps": choice.steps, "val_score": choice.score}, columns=RESULT_COLUMNS)
                rows.to_csv(results_path, mode="a", header=not results_path.exists(), index=False)
                done = pd.concat([done, rows]) if len(done) else rows
    return done[done["method"].isin(cfg.methods)].reset_index(drop=True)
