"""Candidate models over the lambda grid, with their predictions cached on disk (resumable, one file per model)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .backbones import BackboneConfig, Classifier
from .data.splits import Scenario
from .methods import make_method
from .training import TrainConfig, predict_proba, train_model

PREDICTION_SETS = ("source_val", "target_val", "target_test")


def config_tag(*configs) -> str:
    """Short stable hash of dataclasses/dicts: cache entries of different settings never mix."""
    blob = json.dumps([asdict(c) if hasattr(c, "__dataclass_fields__") else c for c in configs],
                      sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz so that an interrupted run never leaves a truncated cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def train_candidate(scenario: Scenario, method: str, lam: float, seed: int, backbone: BackboneConfig,
                    train: TrainConfig) -> dict[str, np.ndarray]:
    """Train one candidate (CE_source + lam * L_DA) and return its softmax outputs on the held-out and test sets."""
    torch.manual_seed(seed)
    model = Classifier(scenario.input_shape, scenario.num_classes, backbone)
    da = make_method(method, model.backbone.out_dim, scenario.num_classes, seed) if lam > 0 else None
    train_model(model, scenario.source.x_train, scenario.source.y_train, train, seed,
                x_target=scenario.target.x_train, method=da, lam=lam)
    data = {"source_val": scenario.source.x_val, "target_val": scenario.target.x_val,
            "target_test": scenario.target.x_test}
    return {k: predict_proba(model, data[k], train.device).astype(np.float32) for k in PREDICTION_SETS}


def candidate_predictions(scenario: Scenario, method: str, lambdas: list[float], seed: int,
                          backbone: BackboneConfig, train: TrainConfig, cache_dir: str | Path,
                          tag: str) -> dict[str, np.ndarray]:
    """Predictions of the K = len(lambdas) candidates of ``method``, stacked (K, n, classes) per prediction set.

    Each candidate is read from ``cache_dir`` when present, otherwise trained and stored. lambda = 0 is plain
    source training, shared by all methods.
    """
    per_model = []
    for lam in lambdas:
        name = "source_only" if lam == 0 else f"{method}_lam{lam:g}"
        path = Path(cache_dir) / scenario.dataset / scenario.name.replace("->", "_to_") / tag / f"{name}_seed{seed}.npz"
        if path.exists():
            with np.load(path) as f:
                preds = {k: f[k] for k in PREDICTION_SETS}
        else:
            preds = train_candidate(scenario, method, lam, seed, backbone, train)
            save_npz_atomic(path, **preds)
        per_model.append(preds)
    return {k: np.stack([p[k] for p in per_model]).astype(np.float64) for k in PREDICTION_SETS}
