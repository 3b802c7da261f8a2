"""Task catalogue: every task is a gymnasium environment id registered here, so that Minari datasets can
recover their environment with `dataset.recover_environment()` and evaluation calls plain `gym.make`.

Domains (all install from PyPI and run offline on Python 3.11 with one MuJoCo, 3.3.0):
``classic`` (gymnasium classic control + Box2D), ``mujoco`` (gymnasium MuJoCo bodies), ``dmcontrol`` (dm-control suite,
wrapped as a gymnasium env with flattened joint-state observations), ``metaworld`` (Sawyer tasks, goal observable, 39-d
states) and ``atari`` (ale-py, 64x64 grayscale frames, frame skip 4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

NAMESPACE = "xlstmkit"


@dataclass(frozen=True)
class TaskSpec:
    """One task: its domain, how to build its env and which behaviour policy family collects its data.

    ``expert`` names a scripted expert in `rl.policies` (``"cartpole"``, ``"metaworld"``, ...) or ``"ppo"`` for tasks
    whose behaviour data comes from the snapshots of a PPO agent trained here.
    """

    name: str
    domain: str
    maker: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    expert: str = "ppo"
    max_episode_steps: int = 1000

    @property
    def env_id(self) -> str:
        return f"{NAMESPACE}/{self.name}-v0"


def _classic(name: str, gym_id: str, expert: str, steps: int, **kw: Any) -> TaskSpec:
    return TaskSpec(name, "classic", "gym", {"id": gym_id, **kw}, expert, steps)


def _mujoco(name: str, gym_id: str) -> TaskSpec:
    return TaskSpec(name, "mujoco", "gym", {"id": gym_id}, "ppo", 1000)


def _dmc(domain: str, task: str) -> TaskSpec:
    return TaskSpec(f"dmc-{domain}-{task}", "dmcontrol", "dmc", {"domain": domain, "task": task}, "ppo", 1000)


def _metaworld(env_name: str) -> TaskSpec:
    return TaskSpec(f"mw-{env_name}", "metaworld", "metaworld", {"env_name": env_name}, "metaworld", 500)


def _atari(game: str) -> TaskSpec:
    return TaskSpec(f"atari-{game.lower()}", "atari", "atari", {"game": game}, "ppo", 2000)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _classic("cartpole", "CartPole-v1", "cartpole", 500),
        _classic("mountaincar", "MountainCar-v0", "mountaincar", 200),
        _classic("acrobot", "Acrobot-v1", "acrobot", 500),
        _classic("pendulum", "Pendulum-v1", "pendulum", 200),
        _classic("lunarlander", "LunarLander-v3", "lunarlander", 1000),
        _classic("lunarlander-continuous", "LunarLander-v3", "lunarlander", 1000, continuous=True),
        _mujoco("halfcheetah", "HalfCheetah-v5"),
        _mujoco("hopper", "Hopper-v5"),
        _mujoco("walker2d", "Walker2d-v5"),
        _mujoco("ant", "Ant-v5"),
        _mujoco("inverted-pendulum", "InvertedPendulum-v5"),
        _mujoco("reacher", "Reacher-v5"),
        _dmc("cartpole", "swingup"),
        _dmc("cartpole", "balance"),
        _dmc("reacher", "easy"),
        _dmc("point_mass", "easy"),
        _dmc("cheetah", "run"),
        _dmc("walker", "walk"),
        _dmc("finger", "spin"),
        _dmc("ball_in_cup", "catch"),
        *[
            _metaworld(n)
            for n in [
                "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
                "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
                "plate-slide-v3", "faucet-open-v3", "handle-press-v3", "coffee-button-v3",
            ]
        ],
        *[_atari(g) for g in ["Pong", "Breakout", "SpaceInvaders", "MsPacman", "Seaquest", "Qbert"]],
    ]
}
DOMAINS: tuple[str, ...] = tuple(dict.fromkeys(t.domain for t in TASKS.values()))


class DMControlEnv(gym.Env):
    """A dm-control suite task as a gymnasium env: observations are the task's state arrays flattened into one
    float32 vector, actions a Box from the action spec; the suite's time limit becomes ``truncated``."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, domain: str, task: str):
        from dm_control import suite

        self._load = lambda seed: suite.load(domain, task, task_kwargs={"random": seed})
        self._env = self._load(0)
        spec = self._env.action_spec()
        self.action_space = gym.spaces.Box(spec.minimum.astype(np.float32), spec.maximum.astype(np.float32))
        dim = sum(int(np.prod(s.shape)) for s in self._env.observation_spec().values())
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (dim,), np.float32)

    @staticmethod
    def _flatten(observation: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(v, np.float32).ravel() for v in observation.values()])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._env = self._load(seed)
        return self._flatten(self._env.reset().observation), {}

    def step(self, action):
        ts = self._env.step(np.asarray(action, np.float64))
        terminated = ts.last() and ts.discount == 0.0
        truncated = ts.last() and not terminated
        return self._flatten(ts.observation), float(ts.reward or 0.0), bool(terminated), bool(truncated), {}


class _MetaWorldTask(gym.Wrapper):
    """Meta-World env with a fresh goal/object placement per seeded reset (the suite freezes it by default) and
    float32 observations (it returns float64 states slightly outside its declared box)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        env.unwrapped._freeze_rand_vec = False
        env.unwrapped.seeded_rand_vec = True
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.env.unwrapped.seed(seed)
        observation, info = self.env.reset()
        return np.asarray(observation, np.float32), info

    def step(self, action):
        observation, reward, terminated, _, info = self.env.step(action)  # the time limit truncates, not Meta-World
        return np.asarray(observation, np.float32), float(reward), terminated, False, info


def _make_metaworld(env_name: str) -> gym.Env:
    import metaworld  # noqa: F401  (registers the Meta-World ids)

    return _MetaWorldTask(gym.make("Meta-World/goal_observable", env_name=env_name, seed=0).unwrapped)


class _ResizeFrame(gym.ObservationWrapper):
    """Nearest-neighbour resize of grayscale frames (numpy only, so no OpenCV dependency)."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        height, width = env.observation_space.shape[:2]
        self._rows = np.linspace(0, height - 1, size).round().astype(np.int64)
        self._cols = np.linspace(0, width - 1, size).round().astype(np.int64)
        self.observation_space = gym.spaces.Box(0, 255, (size, size), np.uint8)

    def observation(self, observation):
        return observation[self._rows][:, self._cols]


def _make_atari(game: str) -> gym.Env:
    import ale_py

    gym.register_envs(ale_py)
    env = gym.make(f"ALE/{game}-v5", obs_type="grayscale", frameskip=4, repeat_action_probability=0.25)
    return _ResizeFrame(env.unwrapped, 64)


def make_task_env(task: str) -> gym.Env:
    """Entry point of every registered ``xlstmkit/<task>-v0`` id (without the time limit, which gym.make adds)."""
    spec = TASKS[task]
    if spec.maker == "gym":
        return gym.make(**spec.kwargs).unwrapped
    if spec.maker == "dmc":
        return DMControlEnv(**spec.kwargs)
    if spec.maker == "metaworld":
        return _make_metaworld(**spec.kwargs)
    return _make_atari(**spec.kwargs)


def register_tasks() -> None:
    """Register every task of `TASKS` with gymnasium (idempotent)."""
    for spec in TASKS.values():
        if spec.env_id not in gym.registry:
            gym.register(spec.env_id, entry_point=f"{__name__}:make_task_env", kwargs={"task": spec.name},
                         max_episode_steps=spec.max_episode_steps, disable_env_checker=True)


def get_task(name: str) -> TaskSpec:
    """Look a task up by name, with a helpful error."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name]


def make_env(name: str, **kwargs: Any) -> gym.Env:
    """Build a task's env (with its time limit) by task name."""
    register_tasks()
    return gym.make(get_task(name).env_id, **kwargs)


register_tasks()
