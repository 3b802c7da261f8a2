"""The few-shot methods compared in the benchmarks: each is an initial parameter vector plus an update rule,
with the learning-rate grid family it is tuned over."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .adapt import UpdateRule
from .subspace import Subspace, fit_subspace

SUBGD_VARIANTS = {
    "subgd": dict(k=None, weighted=True, basis="eigen"),
    "subgd_topk": dict(weighted=True, basis="eigen"),
    "subgd_unweighted": dict(k=None, weighted=False, basis="eigen"),
    "subgd_random": dict(k=None, weighted=True, basis="random"),
}
FINETUNE = {"no_finetune": "sgd", "sgd": "sgd", "adam": "adam"}
META = {"maml": "sgd", "fomaml": "sgd", "reptile": "sgd", "metasgd": "metasgd"}
ALL_METHODS = tuple(SUBGD_VARIANTS) + tuple(FINETUNE) + tuple(META)


@dataclass
class Method:
    name: str
    theta: torch.Tensor
    rule: UpdateRule
    grid: str  # key of the learning-rate grid; "none" = no adaptation


def check_methods(names: list[str]) -> None:
    unknown = set(names) - set(ALL_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; available: {ALL_METHODS}")


def subgd_subspace(name: str, updates: torch.Tensor, topk: int, seed: int) -> Subspace:
    """The subspace of a SubGD variant (``topk`` is used by ``subgd_topk`` only)."""
    kw = dict(SUBGD_VARIANTS[name])
    kw.setdefault("k", min(topk, *updates.shape))
    return fit_subspace(updates, seed=seed, **kw)


def build_method(name: str, theta0: torch.Tensor, subspace: Subspace | None = None, meta: dict | None = None) -> Method:
    """Assemble a method from its artefacts: θ0 (fine-tuning and SubGD), a fitted subspace (SubGD variants),
    or the output of :func:`fewshot.meta.meta_train` (meta-learning baselines)."""
    if name in SUBGD_VARIANTS:
        return Method(name, theta0, UpdateRule("sgd", subspace.precondition), "subgd")
    if name in FINETUNE:
        return Method(name, theta0, UpdateRule(FINETUNE[name]), "none" if name == "no_finetune" else name)
    if name == "metasgd":
        alpha = meta["alpha"]
        return Method(name, meta["theta"], UpdateRule("sgd", lambda g: g * alpha), "metasgd")
    if name in META:
        return Method(name, meta["theta"], UpdateRule("sgd"), "sgd")
    raise ValueError(f"unknown method {name!r}; available: {ALL_METHODS}")
