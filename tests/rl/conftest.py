"""Fixtures shared by the RL tests: small Minari datasets generated once per session."""
import warnings

import pytest
import torch

from rl.data.collect import CollectConfig, collect_task, dataset_id, minari_root
from rl.data.loader import load_task


@pytest.fixture(scope="session", autouse=True)
def _quiet_and_small():
    torch.set_num_threads(2)
    warnings.filterwarnings("ignore", message=".*(GLFW|obs returned|Constant|Observation is not).*")


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """cartpole (discrete) and lunarlander-continuous (2-d continuous, Box2D), a few episodes each."""
    root = tmp_path_factory.mktemp("minari")
    cfg = CollectConfig(episodes=3, chunk=2, reference_episodes=1)
    for task in ("cartpole", "lunarlander-continuous"):
        collect_task(task, root, cfg, progress=False)
    return root


@pytest.fixture(scope="session")
def tasks(datasets_root):
    with minari_root(datasets_root):
        return [load_task(dataset_id(t)) for t in ("cartpole", "lunarlander-continuous")]
