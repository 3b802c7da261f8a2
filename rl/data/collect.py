"""Build offline datasets in the Minari format with `minari.DataCollector`, from behaviour policies of mixed quality.

Each task gets one dataset ``xlstmkit/<task>/mixed-v0`` under ``root`` (Minari's ``MINARI_DATASETS_PATH``). Episodes
are collected in chunks; a chunk is appended to the dataset when done, so an interrupted run resumes at the last
finished chunk, and episode ``k`` always uses the same seed and behaviour draw. Reference returns (random policy,
best behaviour policy without noise) are measured once and stored as Minari's ``ref_min_score`` / ``ref_max_score``.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..envs import get_task, make_env
from ..policies import BehaviourMixture, Policy, rollout_returns, scripted_expert
from ..ppo import PPOConfig, SnapshotPolicy, train_ppo


@dataclass
class CollectConfig:
    """How much data per task and how mixed its quality is: per episode a noise level (1.0 on a discrete task =
    uniform random) and, with probability ``random_fraction``, the uniform random policy instead."""

    episodes: int = 50
    chunk: int = 10
    noise_levels: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6, 1.0)
    random_fraction: float = 0.1
    reference_episodes: int = 5
    seed: int = 0
    ppo: PPOConfig = field(default_factory=PPOConfig)


def dataset_id(task: str) -> str:
    """Minari id of a task's generated dataset."""
    return f"xlstmkit/{task}/mixed-v0"


@contextlib.contextmanager
def minari_root(root: str | Path) -> Iterator[Path]:
    """Point Minari at ``root`` (it reads ``MINARI_DATASETS_PATH`` on every call) for the duration of the block."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield root
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def behaviour_policies(task: str, root: Path, cfg: CollectConfig) -> tuple[list[Policy], list[Policy]]:
    """(behaviour policies, noise-free candidates for the best reference) of a task: its scripted expert, or the
    snapshots of a PPO run (trained once, cached under ``root/_ppo/<task>``)."""
    spec = get_task(task)
    if spec.expert != "ppo":
        expert = scripted_expert(task)
        return [expert], [expert]
    space = make_env(task).action_space
    run_dir = root / "_ppo" / task
    index = train_ppo(task, run_dir, cfg.ppo)
    paths = [run_dir / s["path"] for s in index["snapshots"]]
    stochastic = [SnapshotPolicy(p, space, deterministic=False, seed=cfg.seed + i) for i, p in enumerate(paths)]
    return stochastic, [SnapshotPolicy(paths[-1], space, deterministic=True)]


def reference_returns(task: str, best_candidates: list[Policy], root: Path, cfg: CollectConfig) -> dict:
    """Mean return of the random policy and of the best noise-free candidate (cached in ``root/_refs``)."""
    path = root / "_refs" / f"{task}.json"
    if path.exists():
        return json.loads(path.read_text())
    env = make_env(task)
    seed = cfg.seed + 10_000_000  # disjoint from the dataset's episode seeds
    random_ret = rollout_returns(env, None, cfg.reference_episodes, seed)
    best = max(float(rollout_returns(env, p, cfg.reference_episodes, seed).mean()) for p in best_candidates)
    refs = {"random": float(random_ret.mean()), "best": best}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(refs))
    return refs


def collect_task(task: str, root: str | Path, cfg: CollectConfig | None = None, progress: bool = True) -> dict:
    """Collect (or finish collecting) ``cfg.episodes`` episodes of ``task`` into its Minari dataset under ``root``.

    Returns the task's summary: episodes, steps and the random / behaviour / best mean returns.
    """
    import minari

    cfg = cfg or CollectConfig()
    if cfg.episodes < 1 or cfg.chunk < 1:
        raise ValueError(f"episodes and chunk must be >= 1, got {cfg.episodes}, {cfg.chunk}")
    spec = get_task(task)
    with minari_root(root) as resolved:
        did = dataset_id(task)
        dataset = minari.load_dataset(did) if did in minari.list_local_datasets() else None
        done = dataset.total_episodes if dataset is not None else 0
        if done < cfg.episodes:
            policies, best_candidates = behaviour_policies(task, resolved, cfg)
            refs = reference_returns(task, best_candidates, resolved, cfg)
            bar = tqdm(total=cfg.episodes, initial=done, desc=f"collect {task}", disable=not progress, leave=False)
            while done < cfg.episodes:
                n = min(cfg.chunk, cfg.episodes - done)
                collector = _collect_chunk(task, policies, cfg, first_episode=done, episodes=n, bar=bar)
                if dataset is None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # code_permalink / author are not ours to set
                        dataset = collector.create_dataset(
                            dataset_id=did, algorithm_name=f"{spec.expert}-mixture", ref_min_score=refs["random"],
                            ref_max_score=refs["best"],
                            description=json.dumps({"task": task, "domain": spec.domain,
                                                    "noise_levels": list(cfg.noise_levels),
                                                    "random_fraction": cfg.random_fraction}))
                else:
                    collector.add_to_dataset(dataset)
                collector.close()
                done += n
            bar.close()
        return dataset_summary(minari.load_dataset(did))


def _collect_chunk(task: str, policies: list[Policy], cfg: CollectConfig, first_episode: int, episodes: int,
                   bar: tqdm):
    from minari import DataCollector

    env = make_env(task)
    collector = DataCollector(env)
    mixture = BehaviourMixture(policies, cfg.noise_levels, env.action_space, seed=cfg.seed * 1_000_003 + first_episode,
                               random_fraction=cfg.random_fraction)
    for k in range(first_episode, first_episode + episodes):
        acting = mixture.new_episode()
        obs, _ = collector.reset(seed=cfg.seed * 1_000_003 + k)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = collector.step(acting(obs))
            done = terminated or truncated
        bar.update(1)
    return collector


def dataset_summary(dataset) -> dict:
    """Episodes, steps and random / behaviour (mean and max) / best returns of a Minari dataset."""
    returns = np.array([float(np.sum(ep.rewards)) for ep in dataset.iterate_episodes()])
    meta = dataset.storage.metadata
    return {"dataset": meta["dataset_id"], "episodes": int(dataset.total_episodes), "steps": int(dataset.total_steps),
            "random": meta.get("ref_min_score"), "behaviour": float(returns.mean()),
            "behaviour_max": float(returns.max()), "best": meta.get("ref_max_score")}


def collect(tasks: list[str], root: str | Path, cfg: CollectConfig | None = None, progress: bool = True) -> list[dict]:
    """Collect every task and write ``root/summary.md`` (the documented returns per dataset)."""
    rows = []
    for task in tqdm(tasks, desc="datasets", disable=not progress):
        rows.append({"task": task, "domain": get_task(task).domain, **collect_task(task, root, cfg, progress)})
    lines = ["| task | domain | episodes | steps | random | behaviour (mean) | behaviour (max) | best |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['domain']} | {r['episodes']} | {r['steps']} | {r['random']:.1f} | "
              f"{r['behaviour']:.1f} | {r['behaviour_max']:.1f} | {r['best']:.1f} |" for r in rows]
    Path(root, "summary.md").write_text("\n".join(lines) + "\n")
    return rows
