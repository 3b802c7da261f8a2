"""Importance weights w(x) ~ p_T(x) / p_S(x) from a probabilistic source-vs-target domain classifier."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones import BackboneConfig, Classifier
from .training import TrainConfig, predict_proba, train_model
from .validation import check_features

_PROB_CLIP = 1e-6


def density_ratio(p_target: np.ndarray, n_source: int, n_target: int) -> np.ndarray:
    """w = p(t|x) / p(s|x) * n_s / n_t: the odds of a domain classifier trained on n_s source and n_t target points."""
    p = np.clip(np.asarray(p_target, dtype=np.float64), _PROB_CLIP, 1 - _PROB_CLIP)
    return p / (1 - p) * (n_source / n_target)


@dataclass
class WeighterConfig:
    """``estimator``: "logistic" (scikit-learn LogisticRegression on flattened inputs, inverse regularisation ``C``)
    or "neural" (a fresh backbone + linear head trained with ``train``). ``clip``: optional upper bound on w."""

    estimator: str = "neural"
    C: float = 1.0
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=500, batch_size=128))
    clip: float | None = None


class ImportanceWeighter:
    """Domain-classifier density-ratio estimator: ``fit(source_x, target_x)``, then ``predict(x)`` gives w(x)."""

    def __init__(self, cfg: WeighterConfig | None = None, seed: int = 0):
        self.cfg = cfg or WeighterConfig()
        if self.cfg.estimator not in ("logistic", "neural"):
            raise ValueError(f"estimator: expected 'logistic' or 'neural', got {self.cfg.estimator!r}")
        if self.cfg.clip is not None and self.cfg.clip <= 0:
            raise ValueError(f"clip: expected a positive upper bound or None, got {self.cfg.clip}")
        self.seed = seed

    def fit(self, source_x: np.ndarray, target_x: np.ndarray) -> ImportanceWeighter:
        """Train the domain classifier (label 0 = source, 1 = target) on unlabelled inputs of both domains."""
        xs, xt = check_features(source_x, "source_x"), check_features(target_x, "target_x")
        if xs.shape[1:] != xt.shape[1:]:
            raise ValueError(f"source_x samples have shape {xs.shape[1:]} but target_x {xt.shape[1:]}; expected equal")
        x = np.concatenate([xs, xt])
        d = np.concatenate([np.zeros(len(xs), dtype=np.int64), np.ones(len(xt), dtype=np.int64)])
        self.n_source_, self.n_target_, self.input_shape_ = len(xs), len(xt), xs.shape[1:]
        if self.cfg.estimator == "logistic":
            from sklearn.linear_model import LogisticRegression

            self.model_ = LogisticRegression(C=self.cfg.C, max_iter=2000).fit(x.reshape(len(x), -1), d)
        else:
            torch.manual_seed(self.seed)
            model = Classifier(self.input_shape_, 2, self.cfg.backbone)
            self.model_ = train_model(model, x, d, self.cfg.train, seed=self.seed)
        return self

    def predict_target_proba(self, x: np.ndarray) -> np.ndarray:
        """p(target | x) of the fitted domain classifier, shape (n,)."""
        if not hasattr(self, "model_"):
            raise ValueError("ImportanceWeighter is not fitted yet: call fit(source_x, target_x) first")
        a = check_features(x, "x")
        if a.shape[1:] != self.input_shape_:
            raise ValueError(f"x: expected samples of shape {self.input_shape_} as in fit, got {a.shape[1:]}")
        if self.cfg.estimator == "logistic":
            return self.model_.predict_proba(a.reshape(len(a), -1))[:, 1]
        return predict_proba(self.model_, a, self.cfg.train.device)[:, 1]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Importance weights w(x) = p(t|x) / p(s|x) * n_s / n_t (optionally clipped), shape (n,)."""
        w = density_ratio(self.predict_target_proba(x), self.n_source_, self.n_target_)
        return np.minimum(w, self.cfg.clip) if self.cfg.clip is not None else w
