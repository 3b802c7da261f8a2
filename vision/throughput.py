"""Training throughput of a timm model on synthetic batches, one process per GPU under torchrun (DDP).

No data loading: the numbers measure the model's forward/backward, the optimizer and the gradient all-reduce, so
that runs with 1, 2, ... GPUs show how training scales, not how fast the disk or the JPEG decoder is.
"""
from __future__ import annotations

import time
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import vision  # noqa: F401  (registers the ViL models with timm)
from vision.distributed import all_reduce_sum, barrier, init_distributed


def training_throughput(model: str, model_kwargs: dict[str, Any] | None = None, img_size: int = 224,
                        batch_size: int = 256, steps: int = 20, warmup: int = 5, compile: bool = False,
                        amp: bool = True, device: str = "auto") -> dict[str, Any]:
    """Images/s of AdamW training steps (bf16 autocast on GPU) on a fixed random batch of `batch_size` per process.

    Returns world size, images/s per process (mean over ranks) and in total, and seconds per step.
    """
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and batch_size >= 1, got {steps}, {warmup}, {batch_size}")
    info = init_distributed(device)
    torch.manual_seed(0)
    net = timm.create_model(model, img_size=img_size, num_classes=1000, **(model_kwargs or {})).to(info.device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    if info.world > 1:
        net = DistributedDataParallel(net)
    if compile:
        net = torch.compile(net)
    net.train()
    x = torch.randn(batch_size, 3, img_size, img_size, device=info.device)
    y = torch.randint(0, 1000, (batch_size,), device=info.device)
    autocast = torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=amp and info.device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = F.cross_entropy(net(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sync() -> None:
        if info.device.type == "cuda":
            torch.cuda.synchronize(info.device)
        barrier(info)

    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    (total,) = all_reduce_sum([batch_size * steps / seconds], info)
    return {"model": model, "world": info.world, "batch_per_process": batch_size, "img_size": img_size,
            "compile": compile, "img_per_s_per_process": total / info.world, "img_per_s_total": total,
            "seconds_per_step": seconds / steps}
