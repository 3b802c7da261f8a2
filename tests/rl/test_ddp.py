"""Two-process DDP training on CPU (gloo), launched the way torchrun launches `rl.train.train`.

The model has an image encoder that batches of vector tasks leave unused, which is what broke DDP before."""
import csv
import os

import torch
import torch.multiprocessing as mp

from rl.data.collect import dataset_id, minari_root
from rl.data.loader import load_task
from rl.model import ActionModelConfig
from rl.train import TrainConfig, train

SMALL = {"embedding_dim": 32, "num_blocks": 2, "num_heads": 2, "max_obs_dim": 40, "max_action_dims": 4,
         "dropout": 0.0, "chunk_size": 8}


def _worker(rank: int, envs: list[dict], root: str, out_dir: str) -> None:
    os.environ.update(envs[rank])
    torch.set_num_threads(1)
    with minari_root(root):
        tasks = [load_task(dataset_id(t)) for t in ("cartpole", "lunarlander-continuous")]
    cfg = TrainConfig(steps=12, batch_size=4, context=8, lr=1e-2, warmup=2, log_every=6, checkpoint_every=6,
                      device="cpu")
    train(ActionModelConfig(**SMALL), cfg, tasks, out_dir, progress=False)
    torch.distributed.destroy_process_group()


def test_two_process_gloo_training(datasets_root, tmp_path, gloo_env):
    out_dir = str(tmp_path / "ddp")
    mp.spawn(_worker, args=([gloo_env(r, 2) for r in range(2)], str(datasets_root), out_dir), nprocs=2, join=True)
    payload = torch.load(os.path.join(out_dir, "last.pt"), weights_only=False)
    assert payload["step"] == 12
    assert len(payload["sampler_rng"]) == 2  # both ranks' sampler states were gathered for an exact resume
    assert payload["sampler_rng"][0] != payload["sampler_rng"][1]  # each rank drew its own batches
    with open(os.path.join(out_dir, "metrics.csv")) as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [6, 12]  # rank 0 alone writes the metrics
