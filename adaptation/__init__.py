"""Unsupervised domain adaptation: candidate DA trainers, importance weighting, and model selection/aggregation
(IWA and its baselines) with a scikit-learn-style API."""
from .backbones import BackboneConfig, Classifier, make_backbone
from .methods import DA_METHODS, DAMethod, make_method
from .selectors import DEV, IWA, IWV, SELECTORS, SOR, TCR, TMR, TMV, Selector, SourceOnly, TargetOracle, make_selector
from .training import TrainConfig, predict_proba, train_model
from .weighting import ImportanceWeighter, WeighterConfig, density_ratio

__all__ = [
    "DA_METHODS", "DEV", "IWA", "IWV", "SELECTORS", "SOR", "TCR", "TMR", "TMV", "BackboneConfig", "Classifier",
    "DAMethod", "ImportanceWeighter", "Selector", "SourceOnly", "TargetOracle", "TrainConfig", "WeighterConfig",
    "density_ratio", "make_backbone", "make_method", "make_selector", "predict_proba", "train_model",
]
