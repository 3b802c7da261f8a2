"""Behaviour policies for data collection: scripted experts, noise, and per-episode mixtures of mixed quality.

A policy is any callable ``obs -> action`` for a single (unbatched) env. Scripted experts exist for classic control
(written here), LunarLander (gymnasium's heuristic) and Meta-World (the suite's 50 shipped policies); the other
domains use snapshots of a PPO agent (`rl.ppo`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

Policy = Callable[[np.ndarray], np.ndarray | int]


def _cartpole(obs: np.ndarray) -> int:
    x, x_dot, theta, theta_dot = obs
    return int(theta + 0.5 * theta_dot + 0.05 * x + 0.2 * x_dot > 0)


def _mountaincar(obs: np.ndarray) -> int:
    return 2 if obs[1] >= 0 else 0


def _acrobot(obs: np.ndarray) -> int:
    # pump energy: torque in the direction of the second link's angular velocity
    return 2 if obs[5] > 0 else 0


def _pendulum(obs: np.ndarray) -> np.ndarray:
    cos_th, sin_th, th_dot = obs
    theta = np.arctan2(sin_th, cos_th)
    if cos_th > 0.8:  # near upright: PD stabilisation
        return np.array([np.clip(-8.0 * theta - 1.5 * th_dot, -2.0, 2.0)], np.float32)
    energy = th_dot**2 / 6.0 + 5.0 * cos_th  # rod of length 1, mass 1, g = 10; upright energy = 5
    push = 2.0 * np.sign(th_dot if th_dot != 0 else 1.0) if energy < 5.0 else 0.0
    return np.array([push], np.float32)


def _lunarlander(continuous: bool) -> Policy:
    from gymnasium.envs.box2d.lunar_lander import heuristic

    class _Flag:  # the heuristic only reads env.unwrapped.continuous
        unwrapped = type("U", (), {"continuous": continuous})()

    return lambda obs: heuristic(_Flag, obs)


def _metaworld(env_name: str) -> Policy:
    from metaworld.policies import ENV_POLICY_MAP

    policy = ENV_POLICY_MAP[env_name]()
    return lambda obs: np.clip(policy.get_action(obs), -1.0, 1.0).astype(np.float32)


def scripted_expert(task: str) -> Policy:
    """The noise-free scripted expert of a task that has one (`rl.envs.TaskSpec.expert != "ppo"`)."""
    from .envs import get_task

    spec = get_task(task)
    simple = {"cartpole": _cartpole, "mountaincar": _mountaincar, "acrobot": _acrobot, "pendulum": _pendulum}
    if spec.expert in simple:
        return simple[spec.expert]
    if spec.expert == "lunarlander":
        return _lunarlander(bool(spec.kwargs.get("continuous", False)))
    if spec.expert == "metaworld":
        return _metaworld(spec.kwargs["env_name"])
    raise ValueError(f"task {task!r} has no scripted expert (expert={spec.expert!r}); train PPO snapshots for it")


class NoisyPolicy:
    """Wraps a policy with action noise of strength ``noise`` in [0, 1]: epsilon-greedy with epsilon = noise for
    discrete actions, Gaussian noise of std ``noise * (high - low) / 2`` (clipped to the box) for continuous ones.
    ``noise = 1`` with a discrete space is the uniform random policy."""

    def __init__(self, policy: Policy | None, action_space: gym.Space, noise: float, rng: np.random.Generator):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.policy, self.space, self.noise, self.rng = policy, action_space, noise, rng

    def __call__(self, obs: np.ndarray):
        if isinstance(self.space, gym.spaces.Discrete):
            if self.policy is None or self.rng.random() < self.noise:
                return int(self.rng.integers(self.space.n))
            return int(self.policy(obs))
        low, high = self.space.low, self.space.high
        if self.policy is None:
            return self.rng.uniform(low, high).astype(self.space.dtype)
        action = np.asarray(self.policy(obs), np.float64)
        action = action + self.rng.normal(0.0, 1.0, action.shape) * self.noise * (high - low) / 2.0
        return np.clip(action, low, high).astype(self.space.dtype)


class BehaviourMixture:
    """Per episode, draws one base policy and one noise level (or, with probability ``random_fraction``, the uniform
    random policy): data of mixed quality from one collector."""

    def __init__(self, policies: Sequence[Policy], noise_levels: Sequence[float], action_space: gym.Space,
                 seed: int, random_fraction: float = 0.0):
        if not policies or not noise_levels:
            raise ValueError("BehaviourMixture needs at least one policy and one noise level")
        if not 0.0 <= random_fraction <= 1.0:
            raise ValueError(f"random_fraction must be in [0, 1], got {random_fraction}")
        self.policies, self.noise_levels, self.space = list(policies), list(noise_levels), action_space
        self.random_fraction = random_fraction
        self.rng = np.random.default_rng(seed)
        self.current: NoisyPolicy = self.new_episode()

    def new_episode(self) -> NoisyPolicy:
        use_random = self.rng.random() < self.random_fraction
        policy = None if use_random else self.policies[self.rng.integers(len(self.policies))]
        noise = float(self.noise_levels[self.rng.integers(len(self.noise_levels))])
        self.current = NoisyPolicy(policy, self.space, noise, self.rng)
        return self.current

    def __call__(self, obs: np.ndarray):
        return self.current(obs)


def rollout_returns(env: gym.Env, policy: Policy | None, episodes: int, seed: int) -> np.ndarray:
    """Undiscounted returns of ``episodes`` episodes (``policy=None``: uniform random actions)."""
    rng = np.random.default_rng(seed)
    acting = NoisyPolicy(policy, env.action_space, 0.0 if policy is not None else 1.0, rng)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(acting(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return np.asarray(returns)
