"""Online evaluation in gymnasium vector envs (recurrent inference, one model step per env step), per-domain
normalised scores, a Markdown table and a bar plot, and the offline sequence-length extrapolation check."""
from __future__ import annotations

import functools
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from . import envs as _envs  # noqa: F401  (registers the xlstmkit/* env ids)
from .data.loader import MultiTaskSampler, TaskInfo, step_tensors, symlog
from .model import ActionModel

TIME_KEYS = ("obs", "frames", "actions", "prev_actions", "first", "prev_rewards", "rtg", "valid")


@torch.no_grad()
def evaluate_task(model: ActionModel, info: TaskInfo, episodes: int = 4, num_envs: int = 4, seed: int = 0,
                  window: int = 0, greedy: bool = True, device: str | torch.device = "cpu",
                  max_episode_steps: int | None = None) -> np.ndarray:
    """Returns of ``episodes`` episodes of one task, ``num_envs`` at a time in a `gymnasium.vector.SyncVectorEnv`.

    LRAM carries its recurrent state over the whole episode; DT attends over a KV cache of ``window`` slots (sliding
    window beyond that). With return-to-go conditioning the target is the task's best reference return.
    ``max_episode_steps`` shortens the env's time limit (quick checks).
    """
    if info.env_id is None or info.env_id not in gym.registry:
        raise ValueError(f"task {info.name}: environment {info.env_id!r} is not registered with gymnasium")
    if episodes < 1 or num_envs < 1:
        raise ValueError("episodes and num_envs must be >= 1")
    model.eval()
    device = torch.device(device)
    codec = info.codec
    mask = codec.output_mask(model.cfg.max_action_dims, model.cfg.num_bins).to(device)
    target = info.ref_max if info.ref_max is not None else info.return_scale
    returns: list[float] = []
    while len(returns) < episodes:
        n = min(num_envs, episodes - len(returns))
        limit = {"max_episode_steps": max_episode_steps} if max_episode_steps else {}
        vec = gym.vector.SyncVectorEnv([functools.partial(gym.make, info.env_id, **limit)] * n,
                                       autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        obs, _ = vec.reset(seed=[seed + len(returns) + i for i in range(n)])
        state = model.init_state(n, window, device)
        prev_bins = torch.zeros(n, model.cfg.max_action_dims, dtype=torch.long, device=device)
        prev_reward = torch.zeros(n, device=device)
        rtg = torch.full((n,), target / info.return_scale, device=device)
        total, done = np.zeros(n), np.zeros(n, bool)
        first = True
        while not done.all():
            obs_vec, frames = step_tensors(info, np.asarray(obs), model.cfg.max_obs_dim)
            inputs = {"obs": obs_vec[:, None].to(device), "is_image": torch.full((n,), info.image, device=device),
                      "prev_actions": prev_bins[:, None], "first": torch.full((n, 1), first, device=device),
                      "prev_rewards": symlog(prev_reward)[:, None], "rtg": rtg[:, None],
                      "action_mask": mask.expand(n, -1, -1)}
            if frames is not None:
                inputs["frames"] = frames[:, None].to(device)
            logits, state = model.step(inputs, state)
            bins = logits.argmax(-1) if greedy else torch.distributions.Categorical(logits=logits).sample()
            actions = codec.decode(bins.cpu().numpy())
            obs, reward, terminated, truncated, _ = vec.step(actions)
            total += np.where(done, 0.0, reward)
            done |= terminated | truncated
            prev_bins, first = bins, False
            prev_reward = torch.as_tensor(reward, dtype=torch.float32, device=device)
            rtg = rtg - prev_reward / info.return_scale
        vec.close()
        returns.extend(total.tolist())
    return np.asarray(returns)


def normalized_score(value: float, info: TaskInfo) -> float:
    """(score - random) / (best - random) with the dataset's reference returns.

    NaN without them, and NaN where the best policy does not clearly beat random (weak behaviour data, e.g. a short
    PPO run): a gap at or below zero, or below 1e-6 of the returns' scale (at least 1), would turn a random-level
    return into a score of 1 or of millions.
    """
    if info.ref_min is None or info.ref_max is None:
        return float("nan")
    scale = max(abs(info.ref_min), abs(info.ref_max), 1.0)
    if not info.ref_max - info.ref_min > 1e-6 * scale:
        return float("nan")
    return (value - info.ref_min) / (info.ref_max - info.ref_min)


def evaluate_models(models: dict[str, ActionModel], infos: list[TaskInfo], episodes: int = 4, num_envs: int = 4,
                    seed: int = 0, window: int = 0, device: str | torch.device = "cpu",
                    progress: bool = False) -> list[dict]:
    """Rows ``{model, task, domain, return, return_std, normalized}`` for every model and task (``progress``: a
    tqdm bar over the model-task pairs)."""
    rows = []
    bar = tqdm(total=len(models) * len(infos), desc="evaluate", disable=not progress)
    for name, model in models.items():
        for info in infos:
            bar.set_postfix_str(f"{name} {info.name}")
            returns = evaluate_task(model, info, episodes, num_envs, seed, window, device=device)
            rows.append({"model": name, "task": info.name, "domain": info.domain, "return": float(returns.mean()),
                         "return_std": float(returns.std()), "normalized": normalized_score(returns.mean(), info)})
            bar.update()
    bar.close()
    return rows


def domain_scores(rows: list[dict]) -> dict[tuple[str, str], float]:
    """Mean normalised score per (model, domain)."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["domain"]), []).append(r["normalized"])
    return {k: float(np.nanmean(v)) if not np.isnan(v).all() else float("nan") for k, v in groups.items()}


def _score(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{value:.3f}"


def markdown_table(rows: list[dict]) -> str:
    """Per-task returns and normalised scores, then per-domain means, as Markdown."""
    lines = ["| model | domain | task | return | normalized |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['domain']} | {r['task']} | {r['return']:.1f} ± {r['return_std']:.1f} | "
              f"{_score(r['normalized'])} |" for r in rows]
    lines += ["", "| model | domain | mean normalized score |", "|---|---|---:|"]
    lines += [f"| {m} | {d} | {_score(s)} |" for (m, d), s in domain_scores(rows).items()]
    return "\n".join(lines) + "\n"


def bar_plot(rows: list[dict], path: str | Path) -> None:
    """Grouped bars: mean normalised score per domain, one bar per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = domain_scores(rows)
    models = list(dict.fromkeys(m for m, _ in scores))
    domains = list(dict.fromkeys(d for _, d in scores))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(domains), 3.2))
    for i, m in enumerate(models):
        xs = np.arange(len(domains)) + (i - (len(models) - 1) / 2) * width
        ax.bar(xs, [scores.get((m, d), np.nan) for d in domains], width, label=m)
    ax.set_xticks(np.arange(len(domains)), domains)
    ax.set_ylabel("normalized score")
    ax.axhline(0.0, color="k", lw=0.5)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def context_extrapolation(model: ActionModel, sampler: MultiTaskSampler, factors=(1, 2, 4, 8), batches: int = 4,
                          batch_size: int = 16, seed: int = 0, device: str | torch.device = "cpu") -> list[dict]:
    """Action loss on the same final ``sampler.context`` targets, seen with ``factor`` times the training context
    of history (suffixes of one long segment). A model that extrapolates holds or improves with longer histories."""
    model.eval()
    sampler.rng = np.random.default_rng(seed)  # same windows for every model
    longest = sampler.context * max(factors)
    samples = [sampler.sample(batch_size, longest) for _ in range(batches)]
    rows = []
    for factor in factors:
        length = sampler.context * factor
        losses, accs = [], []
        for sample in samples:
            batch = {k: (v[:, -length:] if k in TIME_KEYS else v).to(device) for k, v in sample.items()}
            batch["valid"] = batch["valid"].clone()
            batch["valid"][:, : -sampler.context] = False
            _, stats = model.loss(batch)
            losses.append(stats["loss"])
            accs.append(stats["accuracy"])
        rows.append({"factor": factor, "length": length, "loss": float(np.mean(losses)),
                     "accuracy": float(np.mean(accs))})
    return rows
