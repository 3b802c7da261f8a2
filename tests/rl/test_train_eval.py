"""A short training run lowers the loss and resumes; evaluation runs in every domain's env; the pipeline runs."""
import csv
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl.data.loader import MultiTaskSampler, TaskInfo
from rl.envs import make_env
from rl.evaluate import context_extrapolation, evaluate_task, markdown_table, normalized_score
from rl.model import ActionModel, ActionModelConfig
from rl.pipeline import run
from rl.train import TrainConfig, load_checkpoint, train

SMALL = {"embedding_dim": 32, "num_blocks": 2, "num_heads": 2,
         "max_obs_dim": 40, "max_action_dims": 4, "dropout": 0.0, "chunk_size": 8}


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_short_training_lowers_loss_and_resumes(tasks, tmp_path):
    cfg = TrainConfig(steps=24, batch_size=8, context=8, lr=1e-2, warmup=2, log_every=6, checkpoint_every=12)
    path = train(ActionModelConfig(**SMALL), cfg, tasks, tmp_path, progress=False)
    rows = _rows(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [6, 12, 18, 24]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]) - 0.5
    _, infos, payload = load_checkpoint(path)
    assert payload["step"] == 24 and [i.name for i in infos] == ["cartpole", "lunarlander-continuous"]
    train(ActionModelConfig(**SMALL), TrainConfig(**{**cfg.__dict__, "steps": 30}), tasks, tmp_path, progress=False)
    assert [int(r["step"]) for r in _rows(tmp_path / "metrics.csv")][-2:] == [24, 30]
    assert torch.load(path, weights_only=False)["step"] == 30


def _info(task, domain):
    env = make_env(task)
    obs, act = env.observation_space, env.action_space
    image = obs.dtype == np.uint8
    dim = 0 if image else int(np.prod(obs.shape))
    discrete = isinstance(act, gym.spaces.Discrete)
    return TaskInfo(task, domain, env.spec.id, image, dim, int(act.n) if discrete else 0,
                    [] if discrete else act.low.tolist(), [] if discrete else act.high.tolist(),
                    [0.0] * dim, [1.0] * dim, 100.0, 0.0, 100.0)


@pytest.mark.parametrize("task,domain", [("cartpole", "classic"), ("inverted-pendulum", "mujoco"),
                                         ("dmc-cartpole-balance", "dmcontrol"), ("mw-reach-v3", "metaworld"),
                                         ("atari-pong", "atari")])
@pytest.mark.parametrize("backbone", ["lram", "dt"])
def test_evaluation_runs_in_every_domain(task, domain, backbone):
    torch.manual_seed(0)
    model = ActionModel(ActionModelConfig(backbone=backbone, **SMALL))
    info = _info(task, domain)
    returns = evaluate_task(model, info, episodes=2, num_envs=2, window=8, max_episode_steps=12)
    assert returns.shape == (2,) and np.isfinite(returns).all()
    if task == "cartpole":
        assert 1 <= returns.min() <= returns.max() <= 12


def test_scores_table_and_extrapolation(tasks):
    info = tasks[0].info
    assert normalized_score(info.ref_max, info) == pytest.approx(1.0)
    assert normalized_score(info.ref_min, info) == pytest.approx(0.0)
    # weak behaviour data: a "best" at or below random has no scale, so no score (not 1.0 or millions)
    for best in (info.ref_min, info.ref_min - 5.0, info.ref_min + 1e-12):
        assert np.isnan(normalized_score(info.ref_min, dataclasses.replace(info, ref_max=best)))
    table = markdown_table([{"model": "lram", "task": "t", "domain": "d", "return": 1.0, "return_std": 0.0,
                             "normalized": 0.5}])
    assert "| lram | d | 0.500 |" in table
    assert "| lram | d | n/a |" in markdown_table([{"model": "lram", "task": "t", "domain": "d", "return": 1.0,
                                                    "return_std": 0.0, "normalized": float("nan")}])
    model = ActionModel(ActionModelConfig(**SMALL))
    rows = context_extrapolation(model, MultiTaskSampler(tasks, 8, 40, 4), factors=(1, 2), batches=1, batch_size=4)
    assert [r["length"] for r in rows] == [8, 16] and all(np.isfinite(r["loss"]) for r in rows)


def test_pipeline_end_to_end(tmp_path):
    cfg = {"stage": "all", "tasks": ["cartpole"], "datasets_dir": str(tmp_path / "data"), "out_dir": str(tmp_path / "run"),
           "collect": {"episodes": 2, "chunk": 2, "reference_episodes": 1}, "model": SMALL,
           "train": {"steps": 4, "batch_size": 4, "context": 8, "log_every": 2, "checkpoint_every": 4},
           "eval": {"episodes": 1, "num_envs": 1, "factors": [1, 2], "batches": 1}}
    results = run(cfg, progress=False)
    assert {r["model"] for r in results["eval"]} == {"lram", "dt"}
    for name in ("datasets.csv", "eval.csv", "eval.md", "scores.png", "extrapolation.csv", "lram/last.pt", "dt/last.pt"):
        assert (tmp_path / "run" / name).exists(), name
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        run({**cfg, "stage": "eval", "train": {"stepz": 1}}, progress=False)
