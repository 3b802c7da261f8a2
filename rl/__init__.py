"""Large Recurrent Action Model (LRAM) and a Decision-Transformer baseline on offline multi-domain Minari data.

    from rl import collect, load_task, MultiTaskSampler, ActionModel, ActionModelConfig, train, evaluate_task
"""
import importlib

# Public names and the module that defines each; imported on first use (PEP 562), so that `import rl` or a
# benchmark that needs only the model does not pull in minari/jax and every environment suite.
_EXPORTS = {
    "rl.data.collect": ["CollectConfig", "collect", "collect_task", "dataset_id", "minari_root"],
    "rl.data.loader": ["MultiTaskSampler", "TaskData", "TaskInfo", "load_task"],
    "rl.envs": ["DOMAINS", "TASKS", "TaskSpec", "make_env"],
    "rl.evaluate": ["context_extrapolation", "evaluate_models", "evaluate_task", "normalized_score"],
    "rl.inference": ["GraphedStep"],
    "rl.model": ["ActionModel", "ActionModelConfig", "matched_dt_layers"],
    "rl.pipeline": ["run"],
    "rl.ppo": ["PPOConfig", "train_ppo"],
    "rl.tokens": ["ActionCodec"],
    "rl.train": ["TrainConfig", "load_checkpoint", "train"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'rl' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
