"""Build source -> target scenarios from a dataset name, its options, and a list of 'source->target' pairs."""
from __future__ import annotations

from dataclasses import dataclass, field

from .har import load_hhar, load_uci_har, load_wisdm
from .sleep_edf import load_sleep_edf
from .splits import Scenario, split_domain, standardize
from .synthetic import DomainArrays, sensor_subjects, shifted_digits, transformed_moons
from .text_images import load_amazon_reviews, load_mini_domainnet


@dataclass
class DatasetConfig:
    """``name``: moons | digits | sensors | uci_har | hhar | wisdm | sleep_edf | amazon | mini_domainnet.
    ``scenarios``: 'source->target' domain pairs (digits: the shift names; the source is always the clean half).
    ``path``: the local copy for the real sets. ``options``: keyword arguments of the generator/loader.
    ``sizes``: train/val/test counts or fractions per domain."""

    name: str = "moons"
    scenarios: list[str] = field(default_factory=lambda: ["source->target"])
    path: str | None = None
    options: dict = field(default_factory=dict)
    sizes: tuple = (1400, 750, 350)
    standardize: bool = False
    data_seed: int = 0


_LOADERS = {
    "moons": lambda cfg, extra: transformed_moons(seed=cfg.data_seed, **cfg.options),
    "digits": lambda cfg, extra: shifted_digits(extra, seed=cfg.data_seed, **cfg.options),
    "sensors": lambda cfg, extra: sensor_subjects(seed=cfg.data_seed, **cfg.options),
    "uci_har": lambda cfg, extra: load_uci_har(cfg.path, **cfg.options),
    "hhar": lambda cfg, extra: load_hhar(cfg.path, **cfg.options),
    "wisdm": lambda cfg, extra: load_wisdm(cfg.path, **cfg.options),
    "sleep_edf": lambda cfg, extra: load_sleep_edf(cfg.path, **cfg.options),
    "amazon": lambda cfg, extra: load_amazon_reviews(cfg.path, **cfg.options),
    "mini_domainnet": lambda cfg, extra: load_mini_domainnet(cfg.path, **cfg.options),
}
_NEEDS_PATH = {"uci_har", "hhar", "wisdm", "sleep_edf", "amazon", "mini_domainnet"}


def build_scenarios(cfg: DatasetConfig) -> list[Scenario]:
    """All scenarios of one dataset, split per domain and (optionally) standardised by source statistics."""
    if cfg.name not in _LOADERS:
        raise ValueError(f"dataset: expected one of {sorted(_LOADERS)}, got {cfg.name!r}")
    if cfg.name in _NEEDS_PATH and not cfg.path:
        raise ValueError(f"dataset {cfg.name!r} is read from a local copy: set its path")
    shared: DomainArrays | None = None if cfg.name == "digits" else _LOADERS[cfg.name](cfg, None)
    scenarios = []
    for pair in cfg.scenarios:
        if cfg.name == "digits":
            domains, (src, tgt) = _LOADERS["digits"](cfg, pair), ("source", "target")
        else:
            domains = shared
            src, sep, tgt = pair.partition("->")
            if not sep or src not in domains or tgt not in domains:
                raise ValueError(f"scenario {pair!r}: expected 'source->target' with domains from {sorted(domains)}")
        (xs, ys), (xt, yt) = domains[src], domains[tgt]
        num_classes = int(max(ys.max(), yt.max())) + 1
        scenario = Scenario(cfg.name, pair, split_domain(xs, ys, tuple(cfg.sizes), cfg.data_seed),
                            split_domain(xt, yt, tuple(cfg.sizes), cfg.data_seed + 1), num_classes)
        scenarios.append(standardize(scenario) if cfg.standardize else scenario)
    return scenarios
