"""Two-process DDP smoke test on CPU (gloo), the way torchrun launches `vision.train.train`."""
import os

import torch
import torch.multiprocessing as mp

from vision.data import DataConfig
from vision.train import TrainConfig, train


def _worker(rank: int, envs: list[dict], root: str, out_dir: str) -> None:
    os.environ.update(envs[rank])
    torch.set_num_threads(1)
    data = DataConfig(root=root, input_size=16, batch_size=6, num_workers=0, auto_augment=None, mixup=0.0,
                      cutmix=0.0)
    cfg = TrainConfig(model="vil_tiny_patch16_224", model_kwargs=dict(patch_size=4, embed_dim=16, depth=2,
                                                                      chunk_size=16),
                      data=data, epochs=1, warmup_epochs=0, lr=0.05, device="cpu", out_dir=out_dir, progress=False)
    result = train(cfg)
    torch.distributed.barrier()
    # rank 0 saved its weights; every rank must hold the same ones (averaged gradients keep replicas identical)
    saved = torch.load(os.path.join(out_dir, "last.pth"), weights_only=False)["model"]
    live = result["model"].state_dict()
    report = {"world": result["world"], "final": result["final"],
              "same_as_rank0": all(torch.equal(saved[k], live[k]) for k in saved)}
    torch.save(report, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_two_process_gloo_training(stripes_root, tmp_path, gloo_env):
    out_dir = str(tmp_path / "ddp")
    mp.spawn(_worker, args=([gloo_env(r, 2) for r in range(2)], stripes_root, out_dir), nprocs=2, join=True)
    reports = [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    assert [r["world"] for r in reports] == [2, 2]
    assert all(r["same_as_rank0"] for r in reports)
    # both ranks report the same all-reduced metrics over the whole val set
    assert reports[0]["final"]["top1"] == reports[1]["final"]["top1"]
    assert reports[0]["final"]["train_loss"] == reports[1]["final"]["train_loss"]
    assert os.path.exists(os.path.join(out_dir, "metrics.csv"))
