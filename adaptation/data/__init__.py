"""Domain-shift data: generators (Transformed Moons, shifted digits, sensor subjects), loaders for real sets in
their published layouts, and scenario splits."""
from .har import load_hhar, load_uci_har, load_wisdm, sliding_windows
from .scenarios import DatasetConfig, build_scenarios
from .sleep_edf import load_sleep_edf, read_annotations, read_edf
from .splits import Domain, Scenario, holdout_halves, split_domain, standardize
from .synthetic import SENSOR_PROFILES, sensor_subjects, shifted_digits, transformed_moons
from .text_images import load_amazon_reviews, load_mini_domainnet

__all__ = [
    "SENSOR_PROFILES", "DatasetConfig", "Domain", "Scenario", "build_scenarios", "holdout_halves",
    "load_amazon_reviews", "load_hhar", "load_mini_domainnet", "load_sleep_edf", "load_uci_har", "load_wisdm",
    "read_annotations", "read_edf", "sensor_subjects", "shifted_digits", "sliding_windows", "split_domain",
    "standardize", "transformed_moons",
]
