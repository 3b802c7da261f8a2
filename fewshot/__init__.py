"""Few-shot learning of dynamical systems: SubGD (subspace gradient descent), task generators, baselines."""
from .benchmark import BenchmarkConfig, run_benchmark
from .functional import FlatModel
from .models import MLP, NeuralStateSpace, SequenceRegressor, build_model
from .subspace import Subspace, SubspaceOptimizer, fit_subspace
from .training import TrainConfig, collect_updates, pretrain

__all__ = [
    "SubspaceOptimizer", "Subspace", "fit_subspace", "FlatModel", "MLP", "NeuralStateSpace", "SequenceRegressor",
    "build_model", "TrainConfig", "pretrain", "collect_updates", "BenchmarkConfig", "run_benchmark",
]
