"""Training throughput of a timm model on synthetic batches, one process per GPU under torchrun (DDP).

No data loading: the numbers measure the model's forward/backward, the optimizer and the gradient all-reduce, so
that runs with 1, 2, ... GPUs show how training scales, not how fast the disk or the JPEG decoder is.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import vision  # noqa: F401  (registers the ViL models with timm)
from vision.distributed import all_reduce_sum, barrier, init_distributed


def check_compile_mode(mode: str | None) -> None:
    """Raise a ValueError unless `mode` is None or one of torch.compile's modes."""
    modes = ["default", *torch._inductor.list_mode_options()]
    if mode is not None and mode not in modes:
        raise ValueError(f"compile_mode must be None or one of {modes}, got {mode!r}")


def synthetic_steps(model: str, model_kwargs: dict[str, Any] | None, img_size: int, batch_size: int,
                    device: torch.device, *, compile: bool = False, compile_mode: str | None = None,
                    grad_checkpointing: bool = False, distributed: bool = False,
                    amp: bool = True) -> tuple[Callable[[], None], Callable[[], None]]:
    """(inference step, training step) of timm model `model` on one fixed random batch: forward under
    inference_mode, or forward + backward + AdamW (fused on CUDA), both under bf16 autocast on GPU. Each call sets
    eval / train mode first. `distributed` wraps the model in DDP; `compile` runs it under torch.compile, with
    `compile_mode` (e.g. "reduce-overhead": CUDA graphs, for models whose eager step is bound by kernel launches)."""
    torch.manual_seed(0)
    net = timm.create_model(model, img_size=img_size, num_classes=1000, **(model_kwargs or {})).to(device)
    net.set_grad_checkpointing(grad_checkpointing)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    wrapped = DistributedDataParallel(net) if distributed else net
    check_compile_mode(compile_mode)
    wrapped = torch.compile(wrapped, mode=compile_mode) if compile else wrapped
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")

    def infer() -> None:
        net.eval()
        with torch.inference_mode(), autocast:
            wrapped(x)

    def train_step() -> None:
        net.train()
        with autocast:
            loss = F.cross_entropy(wrapped(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return infer, train_step


def training_throughput(model: str, model_kwargs: dict[str, Any] | None = None, img_size: int = 224,
                        batch_size: int = 256, steps: int = 20, warmup: int = 5, compile: bool = False,
                        compile_mode: str | None = None, amp: bool = True, device: str = "auto") -> dict[str, Any]:
    """Images/s of AdamW training steps (bf16 autocast on GPU) on a fixed random batch of `batch_size` per process,
    under torch.compile in `compile_mode` if `compile`.

    Returns world size, images/s per process (mean over ranks) and in total, and seconds per step.
    """
    if steps < 1 or warmup < 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, warmup >= 0 and batch_size >= 1, got {steps}, {warmup}, {batch_size}")
    info = init_distributed(device)
    _, step = synthetic_steps(model, model_kwargs, img_size, batch_size, info.device, compile=compile,
                              compile_mode=compile_mode, distributed=info.world > 1, amp=amp)

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
            "compile": compile, "compile_mode": compile_mode, "img_per_s_per_process": total / info.world,
            "img_per_s_total": total, "seconds_per_step": seconds / steps}
