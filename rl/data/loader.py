"""Read any local Minari dataset into per-task trajectory streams, and sample task-balanced cross-domain batches.

A task's episodes are concatenated into one stream of timesteps with episode-start flags; a training segment is a
window of ``context`` consecutive timesteps of that stream (it may cross episode boundaries: the start flags reset
the previous action/reward tokens and the return-to-go restarts per episode). Observations are either vectors
(normalised per task, zero-padded to ``max_obs_dim``) or 64x64 grayscale frames. Actions become bins of the shared
head (`rl.tokens.ActionCodec`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from ..tokens import ActionCodec

IMAGE_SIZE = 64


@dataclass
class TaskInfo:
    """What the model and the evaluator need to know about a task (JSON-serialisable, stored in checkpoints)."""

    name: str
    domain: str
    env_id: str | None
    image: bool
    obs_dim: int
    discrete_n: int
    action_low: list[float]
    action_high: list[float]
    obs_mean: list[float]
    obs_std: list[float]
    return_scale: float
    ref_min: float | None
    ref_max: float | None

    @property
    def codec(self) -> ActionCodec:
        return ActionCodec(self.discrete_n, self.action_low, self.action_high)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TaskData:
    """One task's stream: observations (N, obs_dim) float32 or (N, 64, 64) uint8, action bins (N, dims),
    rewards (N,), returns-to-go (N,) and episode starts (N,)."""

    info: TaskInfo
    observations: np.ndarray
    action_bins: np.ndarray
    rewards: np.ndarray
    rtg: np.ndarray
    starts: np.ndarray
    episode_returns: np.ndarray

    def __len__(self) -> int:
        return len(self.rewards)


def _flatten_obs(observations, space: gym.Space) -> np.ndarray:
    if isinstance(space, gym.spaces.Dict):  # D4RL-style goal dicts: concatenate in key order
        return np.concatenate([_flatten_obs(observations[k], space[k]) for k in sorted(space.spaces)], axis=-1)
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"observation space {space} is not supported; expected Box or Dict of Boxes")
    array = np.asarray(observations)
    return array.reshape(len(array), -1).astype(np.float32)


def _to_frames(observations: np.ndarray) -> np.ndarray:
    """(N, H, W[, C]) uint8 -> (N, 64, 64) grayscale by channel mean and nearest-neighbour resize."""
    frames = observations.astype(np.float32).mean(-1) if observations.ndim == 4 else observations.astype(np.float32)
    rows = np.linspace(0, frames.shape[1] - 1, IMAGE_SIZE).round().astype(np.int64)
    cols = np.linspace(0, frames.shape[2] - 1, IMAGE_SIZE).round().astype(np.int64)
    return frames[:, rows][:, :, cols].round().astype(np.uint8)


def _is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) in (2, 3)


def load_task(source: str | Path, name: str | None = None, domain: str | None = None) -> TaskData:
    """Load a Minari dataset (a dataset id under ``MINARI_DATASETS_PATH``, or a path to a dataset directory or its
    ``data`` folder) as one task. ``name``/``domain`` default to the dataset's own description (datasets made by
    `rl.data.collect`) or to the dataset id and ``"external"``."""
    import minari

    path = Path(source)
    if path.exists():
        data_dir = path / "data" if (path / "data").is_dir() else path
        dataset = minari.MinariDataset(str(data_dir))
    else:
        dataset = minari.load_dataset(str(source))
    meta = dataset.storage.metadata
    try:
        desc = json.loads(meta.get("description") or "{}")
    except json.JSONDecodeError:
        desc = {}
    name = name or desc.get("task") or meta["dataset_id"]
    domain = domain or desc.get("domain") or "external"
    obs_space, act_space = dataset.observation_space, dataset.action_space
    if isinstance(act_space, gym.spaces.Discrete):
        codec = ActionCodec(int(act_space.n), [], [])
    elif isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        low = np.where(np.isfinite(act_space.low), act_space.low, -1.0)
        high = np.where(np.isfinite(act_space.high), act_space.high, 1.0)
        codec = ActionCodec(0, low.tolist(), high.tolist())
    else:
        raise ValueError(f"action space {act_space} is not supported; expected Discrete or a 1-d Box")

    image = _is_image(obs_space)
    obs, bins, rewards, rtg, starts, returns = [], [], [], [], [], []
    for ep in dataset.iterate_episodes():
        n = len(ep.rewards)
        o = ep.observations
        o = {k: v[:n] for k, v in o.items()} if isinstance(o, dict) else o[:n]  # drop the final observation
        obs.append(_to_frames(np.asarray(o)) if image else _flatten_obs(o, obs_space))
        bins.append(codec.encode(np.asarray(ep.actions)))
        r = np.asarray(ep.rewards, np.float32)
        rewards.append(r)
        rtg.append(np.cumsum(r[::-1])[::-1].astype(np.float32))
        start = np.zeros(n, bool)
        start[0] = True
        starts.append(start)
        returns.append(float(r.sum()))
    if not obs:
        raise ValueError(f"dataset {source} has no episodes")
    observations = np.concatenate(obs)
    episode_returns = np.asarray(returns)
    refs = [meta.get("ref_min_score"), meta.get("ref_max_score")]
    return_scale = float(max([abs(x) for x in refs if x is not None] + [np.abs(episode_returns).max(), 1.0]))
    if image:
        mean, std = [], []
    else:
        mean = observations.mean(0).tolist()
        std = np.maximum(observations.std(0), 1e-3).tolist()
    env_spec = meta.get("env_spec")
    env_id = json.loads(env_spec)["id"] if isinstance(env_spec, str) else None
    info = TaskInfo(name, domain, env_id, image, 0 if image else observations.shape[1], codec.discrete_n,
                    list(codec.low), list(codec.high), mean, std, return_scale, refs[0], refs[1])
    return TaskData(info, observations, np.concatenate(bins), np.concatenate(rewards), np.concatenate(rtg),
                    np.concatenate(starts), episode_returns)


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) log(1 + |x|): squashes rewards of every domain into one range."""
    return torch.sign(x) * torch.log1p(x.abs())


def step_tensors(info: TaskInfo, obs: np.ndarray, max_obs_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(normalised, padded vector obs (..., max_obs_dim), frames (..., 64, 64) uint8 or None) for one task's
    raw observations, the way the model reads them (shared by the sampler and the evaluator)."""
    lead = obs.shape[:-2] if info.image else obs.shape[:-1]
    vec = torch.zeros(*lead, max_obs_dim)
    if info.image:
        return vec, torch.as_tensor(obs, dtype=torch.uint8)
    if info.obs_dim > max_obs_dim:
        raise ValueError(f"task {info.name} has {info.obs_dim}-d observations > max_obs_dim={max_obs_dim}")
    normed = (np.asarray(obs, np.float32) - np.asarray(info.obs_mean, np.float32)) / np.asarray(info.obs_std,
                                                                                               np.float32)
    vec[..., : info.obs_dim] = torch.as_tensor(np.clip(normed, -10, 10))
    return vec, None


class MultiTaskSampler:
    """Samples batches of ``context``-step segments: a task uniformly at random (task-balanced, whatever its size),
    then a window of its stream. Tasks of every domain share a batch (padded to common shapes).

    A batch is a dict of tensors: ``obs`` (B, T, max_obs_dim), ``frames`` (B, T, 64, 64) uint8 (only when the batch
    holds an image task; zeros for its vector tasks), ``is_image`` (B,), ``actions`` (B, T, A) target bins, ``prev_actions`` (B, T, A), ``first`` (B, T) episode
    starts, ``prev_rewards`` (B, T) symlog rewards, ``rtg`` (B, T) scaled returns-to-go, ``action_mask``
    (B, A, bins) valid output bins per task, ``valid`` (B, T) padding mask, ``task`` (B,) task index.
    """

    def __init__(self, tasks: list[TaskData], context: int, max_obs_dim: int, max_action_dims: int,
                 num_bins: int = 256, seed: int = 0):
        if not tasks:
            raise ValueError("MultiTaskSampler needs at least one task")
        if context < 1:
            raise ValueError(f"context must be >= 1, got {context}")
        self.tasks, self.context = tasks, context
        self.max_obs_dim, self.max_action_dims, self.num_bins = max_obs_dim, max_action_dims, num_bins
        self.masks = torch.stack([t.info.codec.output_mask(max_action_dims, num_bins) for t in tasks])
        self.rng = np.random.default_rng(seed)

    def segment(self, task_index: int, start: int, length: int) -> dict[str, torch.Tensor]:
        """One padded segment ``[start, start + length)`` of a task's stream, batch dimension 1."""
        task = self.tasks[task_index]
        stop = min(start + length, len(task))
        n, a = stop - start, self.max_action_dims
        obs, frames = step_tensors(task.info, task.observations[start:stop], self.max_obs_dim)
        out = {
            "obs": torch.zeros(length, self.max_obs_dim),
            "actions": torch.zeros(length, a, dtype=torch.long), "first": torch.ones(length, dtype=torch.bool),
            "prev_rewards": torch.zeros(length), "rtg": torch.zeros(length), "valid": torch.zeros(length, dtype=bool),
        }
        out["obs"][:n] = obs
        if frames is not None:
            out["frames"] = torch.zeros(length, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
            out["frames"][:n] = frames
        dims = task.action_bins.shape[1]
        out["actions"][:n, :dims] = torch.as_tensor(task.action_bins[start:stop])
        out["first"][:n] = torch.as_tensor(task.starts[start:stop])
        previous = np.maximum(np.arange(start, stop) - 1, 0)  # at episode starts these are masked by `first`
        out["prev_actions"] = torch.zeros(length, a, dtype=torch.long)
        out["prev_actions"][:n, :dims] = torch.as_tensor(task.action_bins[previous])
        out["prev_rewards"][:n] = symlog(torch.as_tensor(task.rewards[previous]))
        out["prev_rewards"][out["first"]] = 0.0
        out["rtg"][:n] = torch.as_tensor(task.rtg[start:stop]) / task.info.return_scale
        out["valid"][:n] = True
        out["is_image"] = torch.tensor(task.info.image)
        out["action_mask"] = self.masks[task_index]
        out["task"] = torch.tensor(task_index)
        return {k: v.unsqueeze(0) for k, v in out.items()}

    def sample(self, batch_size: int, length: int | None = None) -> dict[str, torch.Tensor]:
        """A task-balanced batch of segments of ``length`` (default ``context``) timesteps."""
        length = length or self.context
        parts = []
        for task_index in self.rng.integers(len(self.tasks), size=batch_size):
            n = len(self.tasks[task_index])
            start = int(self.rng.integers(max(n - length, 0) + 1))
            parts.append(self.segment(int(task_index), start, length))
        batch = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "frames"}
        if batch["is_image"].any():
            blank = torch.zeros(1, length, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
            batch["frames"] = torch.cat([p.get("frames", blank) for p in parts])
        return batch
