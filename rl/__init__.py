"""Large Recurrent Action Model (LRAM) and a Decision-Transformer baseline on offline multi-domain Minari data.

    from rl import collect, load_task, MultiTaskSampler, ActionModel, ActionModelConfig, train, evaluate_task
"""
from rl.data.collect import CollectConfig, collect, collect_task, dataset_id, minari_root
from rl.data.loader import MultiTaskSampler, TaskData, TaskInfo, load_task
from rl.envs import DOMAINS, TASKS, TaskSpec, make_env
from rl.evaluate import context_extrapolation, evaluate_models, evaluate_task, normalized_score
from rl.inference import GraphedStep
from rl.model import ActionModel, ActionModelConfig, matched_dt_layers
from rl.pipeline import run
from rl.ppo import PPOConfig, train_ppo
from rl.tokens import ActionCodec
from rl.train import TrainConfig, load_checkpoint, train

__all__ = [
    "CollectConfig", "collect", "collect_task", "dataset_id", "minari_root", "MultiTaskSampler", "TaskData",
    "TaskInfo", "load_task", "DOMAINS", "TASKS", "TaskSpec", "make_env", "context_extrapolation", "evaluate_models",
    "evaluate_task", "normalized_score", "GraphedStep", "ActionModel", "ActionModelConfig", "matched_dt_layers", "run",
    "PPOConfig", "train_ppo", "ActionCodec", "TrainConfig", "load_checkpoint", "train",
]
