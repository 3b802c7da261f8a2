"""A compact PPO agent whose training snapshots are behaviour policies of graded quality.

LRAM's Atari data is the replay of a learning DQN; here, for tasks without a scripted expert (MuJoCo, DMControl,
Atari), PPO is trained once per task and ``num_snapshots`` snapshots along its learning curve are saved; the data
collector then mixes them (with action noise) so that the dataset spans random to learned behaviour.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass
class PPOConfig:
    """PPO hyper-parameters (defaults suit small MuJoCo/DMControl bodies; Atari wants ~10M steps on a GPU)."""

    total_steps: int = 200_000
    num_envs: int = 8
    rollout_steps: int = 256
    epochs: int = 4
    minibatches: int = 8
    lr: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip: float = 0.2
    entropy: float = 0.0
    hidden: int = 64
    num_snapshots: int = 5
    seed: int = 0
    device: str = "cpu"


class ActorCritic(nn.Module):
    """Shared torso (MLP for vectors, small CNN for 64x64 frames) with a policy and a value head."""

    def __init__(self, obs_shape: tuple[int, ...], action_space: gym.Space, hidden: int):
        super().__init__()
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        out = int(action_space.n) if self.discrete else int(np.prod(action_space.shape))
        if len(obs_shape) == 2:
            self.torso = nn.Sequential(
                nn.Conv2d(1, 16, 8, 4), nn.ReLU(), nn.Conv2d(16, 32, 4, 2), nn.ReLU(), nn.Flatten(),
                nn.LazyLinear(hidden), nn.ReLU())
        else:
            self.torso = nn.Sequential(nn.Linear(int(np.prod(obs_shape)), hidden), nn.Tanh(),
                                       nn.Linear(hidden, hidden), nn.Tanh())
        self.image = len(obs_shape) == 2
        self.pi = nn.Linear(hidden, out)
        self.v = nn.Linear(hidden, 1)
        self.log_std = nn.Parameter(torch.full((out,), -0.5)) if not self.discrete else None
        self.register_buffer("obs_mean", torch.zeros(obs_shape))
        self.register_buffer("obs_var", torch.ones(obs_shape))
        self.register_buffer("obs_count", torch.tensor(1e-4))
        self.forward(torch.zeros(1, *obs_shape))  # materialise lazy layers

    def _features(self, obs: torch.Tensor) -> torch.Tensor:
        if self.image:
            return self.torso(obs.float().unsqueeze(1) / 255.0)
        return self.torso(((obs - self.obs_mean) / (self.obs_var + 1e-8).sqrt()).clamp(-10, 10))

    def forward(self, obs: torch.Tensor) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        h = self._features(obs)
        if self.discrete:
            dist = torch.distributions.Categorical(logits=self.pi(h))
        else:
            dist = torch.distributions.Independent(torch.distributions.Normal(self.pi(h), self.log_std.exp()), 1)
        return dist, self.v(h).squeeze(-1)

    @torch.no_grad()
    def update_obs_stats(self, obs: torch.Tensor) -> None:
        """Running mean/variance of vector observations (parallel Welford update)."""
        if self.image:
            return
        mean, var, n = obs.mean(0), obs.var(0, unbiased=False), obs.shape[0]
        delta, total = mean - self.obs_mean, self.obs_count + n
        self.obs_var.copy_((self.obs_var * self.obs_count + var * n + delta**2 * self.obs_count * n / total) / total)
        self.obs_mean.add_(delta * n / total)
        self.obs_count.fill_(total)


class SnapshotPolicy:
    """A saved PPO snapshot as a single-env policy ``obs -> action`` (stochastic unless ``deterministic``)."""

    def __init__(self, path: str | Path, action_space: gym.Space, deterministic: bool = False, seed: int = 0):
        payload = torch.load(path, map_location="cpu", weights_only=False)
        self.model = ActorCritic(tuple(payload["obs_shape"]), action_space, payload["hidden"])
        self.model.load_state_dict(payload["state_dict"])
        self.space, self.deterministic = action_space, deterministic
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, obs: np.ndarray):
        dist, _ = self.model(torch.as_tensor(np.asarray(obs), dtype=torch.float32).unsqueeze(0))
        if self.model.discrete:
            logits = dist.logits[0]
            if self.deterministic:
                return int(logits.argmax())
            return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))
        mean = dist.base_dist.loc[0]
        action = mean if self.deterministic else mean + dist.base_dist.scale[0] * torch.randn(
            mean.shape, generator=self.generator)
        return np.clip(action.numpy(), self.space.low, self.space.high).astype(self.space.dtype)


def train_ppo(task: str, out_dir: str | Path, cfg: PPOConfig) -> list[dict]:
    """Train PPO on a task and save ``cfg.num_snapshots`` snapshots (``snapshot_<k>.pt``) plus ``snapshots.json``
    (config, and per snapshot: file name, env steps, mean return of recent training episodes). Returns that index;
    cached: a finished run is not repeated."""
    from .envs import make_env

    out_dir = Path(out_dir)
    index = out_dir / "snapshots.json"
    if index.exists():
        return json.loads(index.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    envs = gym.vector.SyncVectorEnv([lambda: make_env(task) for _ in range(cfg.num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    space = envs.single_action_space
    obs_shape = envs.single_observation_space.shape
    device = torch.device(cfg.device)
    model = ActorCritic(obs_shape, space, cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-5)
    iterations = max(cfg.total_steps // (cfg.num_envs * cfg.rollout_steps), 1)
    save_at = set(np.linspace(0, iterations, cfg.num_snapshots).round().astype(int).tolist())
    obs, _ = envs.reset(seed=cfg.seed)
    running, finished, snapshots = np.zeros(cfg.num_envs), [], []
    n, s = cfg.rollout_steps, cfg.num_envs

    def snapshot(iteration: int) -> None:
        path = out_dir / f"snapshot_{len(snapshots)}.pt"
        torch.save({"state_dict": model.state_dict(), "obs_shape": list(obs_shape), "hidden": cfg.hidden}, path)
        recent = finished[-20:]
        snapshots.append({"path": path.name, "env_steps": iteration * n * s,
                          "mean_return": float(np.mean(recent)) if recent else float("nan")})

    for it in tqdm(range(iterations + 1), desc=f"ppo {task}", leave=False):
        if it in save_at:
            snapshot(it)
        if it == iterations:
            break
        buf_obs = torch.zeros((n, s, *obs_shape), device=device)
        buf_act, buf_logp, buf_val, buf_rew, buf_done = ([] for _ in range(5))
        for t in range(n):
            o = torch.as_tensor(obs, dtype=torch.float32, device=device)
            buf_obs[t] = o
            with torch.no_grad():
                dist, value = model(o)
                action = dist.sample()
            act_np = action.cpu().numpy()
            if not model.discrete:
                act_np = np.clip(act_np, space.low, space.high)
            obs, reward, term, trunc, _ = envs.step(act_np)
            done = term | trunc
            running += reward
            finished.extend(running[done].tolist())
            running[done] = 0.0
            buf_act.append(action)
            buf_logp.append(dist.log_prob(action))
            buf_val.append(value)
            buf_rew.append(torch.as_tensor(reward, dtype=torch.float32, device=device))
            buf_done.append(torch.as_tensor(done, dtype=torch.float32, device=device))
        with torch.no_grad():
            _, next_value = model(torch.as_tensor(obs, dtype=torch.float32, device=device))
        values, rewards, dones = torch.stack(buf_val), torch.stack(buf_rew), torch.stack(buf_done)
        advantages, gae = torch.zeros_like(rewards), torch.zeros(s, device=device)
        for t in reversed(range(n)):
            nxt = next_value if t == n - 1 else values[t + 1]
            delta = rewards[t] + cfg.gamma * nxt * (1 - dones[t]) - values[t]
            gae = delta + cfg.gamma * cfg.gae_lambda * (1 - dones[t]) * gae
            advantages[t] = gae
        returns = advantages + values
        flat_obs = buf_obs.reshape(n * s, *obs_shape)
        flat = [flat_obs, torch.stack(buf_act).reshape(n * s, -1).squeeze(-1) if model.discrete
                else torch.stack(buf_act).reshape(n * s, -1), torch.stack(buf_logp).reshape(-1),
                advantages.reshape(-1), returns.reshape(-1)]
        for _ in range(cfg.epochs):
            for idx in torch.randperm(n * s, device=device).chunk(cfg.minibatches):
                b_obs, b_act, b_logp, b_adv, b_ret = (x[idx] for x in flat)
                b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
                dist, value = model(b_obs)
                ratio = (dist.log_prob(b_act) - b_logp).exp()
                pg = -torch.min(ratio * b_adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * b_adv).mean()
                loss = pg + 0.5 * (value - b_ret).pow(2).mean() - cfg.entropy * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                opt.step()
        model.update_obs_stats(flat_obs)  # after the update, so that old and new log-probs see the same inputs
    envs.close()
    index.write_text(json.dumps({"config": asdict(cfg), "snapshots": snapshots}, indent=1))
    return json.loads(index.read_text())
