"""Dataset round trip: behaviour policies -> minari.DataCollector -> Minari on disk -> loader -> batches."""
import gymnasium as gym
import minari
import numpy as np
import pytest

from rl.data.collect import CollectConfig, collect_task, dataset_id, minari_root
from rl.data.loader import MultiTaskSampler, load_task
from rl.envs import DOMAINS, TASKS, make_env
from rl.policies import BehaviourMixture, rollout_returns, scripted_expert


def test_catalogue_covers_four_domains_and_ten_metaworld_tasks():
    assert {"classic", "mujoco", "dmcontrol", "metaworld", "atari"} <= set(DOMAINS)
    assert sum(t.domain == "metaworld" for t in TASKS.values()) >= 10


@pytest.mark.parametrize("task", ["cartpole", "pendulum", "lunarlander", "mw-drawer-close-v3"])
def test_scripted_experts_beat_random(task):
    env = make_env(task)
    expert = rollout_returns(env, scripted_expert(task), 1, seed=3)
    random = rollout_returns(env, None, 1, seed=3)
    assert expert.mean() > random.mean() + 100


def test_behaviour_mixture_is_reproducible_and_mixed():
    space = gym.spaces.Discrete(4)
    a = BehaviourMixture([lambda obs: 0], [0.0, 1.0], space, seed=1, random_fraction=0.3)
    b = BehaviourMixture([lambda obs: 0], [0.0, 1.0], space, seed=1, random_fraction=0.3)
    def draws(mixture):
        episodes = []
        for _ in range(10):
            policy = mixture.new_episode()
            episodes.append([policy(None) for _ in range(20)])
        return episodes

    draws_a, draws_b = draws(a), draws(b)
    assert draws_a == draws_b
    assert any(all(x == 0 for x in ep) for ep in draws_a) and any(len(set(ep)) > 1 for ep in draws_a)


def test_collect_roundtrip_and_resume(datasets_root, tmp_path):
    with minari_root(datasets_root):
        ds = minari.load_dataset(dataset_id("cartpole"))
        assert ds.total_episodes == 3
        meta = ds.storage.metadata
        assert meta["ref_max_score"] == 500.0 and meta["ref_min_score"] < 100
        first = [float(np.sum(ep.rewards)) for ep in ds.iterate_episodes()]
    summary = collect_task("cartpole", datasets_root, CollectConfig(episodes=4, chunk=2, reference_episodes=1),
                           progress=False)
    assert summary["episodes"] == 4
    with minari_root(datasets_root):
        again = [float(np.sum(ep.rewards)) for ep in minari.load_dataset(dataset_id("cartpole")).iterate_episodes()]
    assert again[:3] == first
    assert summary["random"] <= summary["behaviour"] <= summary["best"] + 1e-6


def test_loader_reads_a_foreign_minari_dataset_by_path(tmp_path):
    with minari_root(tmp_path):
        env = minari.DataCollector(gym.make("Pendulum-v1"))
        for seed in range(2):
            env.reset(seed=seed)
            done = False
            while not done:
                _, _, term, trunc, _ = env.step(env.action_space.sample())
                done = term or trunc
        env.create_dataset("user/pendulum/random-v0", ref_min_score=-1500.0, ref_max_score=-150.0,
                           code_permalink="local", author="test")
    task = load_task(tmp_path / "user" / "pendulum" / "random-v0")
    assert task.info.domain == "external" and task.info.env_id == "Pendulum-v1"
    assert len(task) == 400 and task.starts.sum() == 2 and task.action_bins.shape == (400, 1)
    assert 0 <= task.action_bins.min() and task.action_bins.max() < 256
    assert np.isclose(task.rtg[0], task.episode_returns[0], rtol=1e-4)


def test_sampler_is_task_balanced_and_shifts_actions(tasks):
    sampler = MultiTaskSampler(tasks, context=16, max_obs_dim=40, max_action_dims=4, seed=0)
    batch = sampler.sample(300)
    share = (batch["task"] == 0).float().mean().item()
    assert 0.4 < share < 0.6, share  # uniform over tasks whatever their stream lengths
    assert batch["obs"].shape == (300, 16, 40) and "frames" not in batch
    inner = ~batch["first"][:, 1:]
    assert (batch["prev_actions"][:, 1:][inner] == batch["actions"][:, :-1][inner]).all()
    assert (batch["prev_rewards"][batch["first"]] == 0).all()
    rows = batch["action_mask"].any(-1).sum(-1)
    assert set(rows[batch["task"] == 0].tolist()) == {1} and set(rows[batch["task"] == 1].tolist()) == {2}
    seg = sampler.segment(0, 0, 16)
    assert np.isclose(seg["rtg"][0, 0].item() * tasks[0].info.return_scale, tasks[0].episode_returns[0], rtol=1e-4)
