"""ViL vs DeiT throughput and memory, measured in one run.

    python benchmarks/vil_throughput.py                 # GPU: 224^2 bf16, ViL-T/S/B (triton, torch) vs DeiT-T/S/B,
                                                        # plus 1024^2 batch 8; writes benchmarks/results/vil_throughput.json
    python benchmarks/vil_throughput.py --quick         # CPU smoke run at 64^2 (a few seconds per model)

Train = forward + backward + AdamW step under bf16 autocast; infer = forward under torch.inference_mode.
Peak memory is torch.cuda.max_memory_allocated over the measured steps (weights and optimizer state included).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm

import vision  # noqa: F401  (registers the ViL models with timm)

SIZES = ("tiny", "small", "base")
GIB = 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> tuple[float, float | None]:
    """Seconds per step (mean over `iters` after `warmup`) and peak GiB allocated during the measured steps."""
    for _ in range(warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return seconds, peak


def measure(name: str, kwargs: dict[str, Any], img: int, batch: int, device: torch.device, warmup: int, iters: int,
            train: bool = True, grad_checkpointing: bool = False) -> dict[str, float]:
    """Images/s and peak memory for inference and (optionally) training of timm model `name`."""
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=img, num_classes=1000, **kwargs).to(device)
    model.set_grad_checkpointing(grad_checkpointing)
    x = torch.randn(batch, 3, img, img, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    out: dict[str, float] = {}
    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast:
            model(x)

    seconds, peak = _timed(infer, warmup, iters, device)
    out["infer_img_per_s"] = batch / seconds
    if peak is not None:
        out["infer_peak_mem_gib"] = peak
    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")

        def train_step() -> None:
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        seconds, peak = _timed(train_step, warmup, iters, device)
        out["train_img_per_s"] = batch / seconds
        if peak is not None:
            out["train_peak_mem_gib"] = peak
    return out


@torch.no_grad()
def backend_agreement(img: int, batch: int, device: torch.device) -> float:
    """Max |logit difference| of ViL-T (same weights, bf16 autocast) between the Triton and PyTorch backends."""
    torch.manual_seed(0)
    models = [timm.create_model("vil_tiny_patch16_224", img_size=img, backend=b).to(device).eval()
              for b in ("torch", "triton")]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(batch, 3, img, img, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        torch_out, triton_out = (m(x).float() for m in models)
    return (torch_out - triton_out).abs().max().item()


UNITS = {"img_per_s": "img/s", "mem_gib": "GiB", "logit_diff": "abs"}


def _rows(impl: str, case: str, metrics: dict[str, float], **fields: Any) -> list[dict[str, Any]]:
    return [{"impl": impl, "case": case, "metric": key, "value": round(value, 4),
             "unit": next(u for suffix, u in UNITS.items() if key.endswith(suffix)), **fields}
            for key, value in metrics.items()]


def _run(rows: list, impl: str, case: str, fn: Callable[[], dict[str, float]], **fields: Any) -> None:
    """Measure one configuration; an out-of-memory or kernel failure becomes an "error" row, not a crash."""
    try:
        metrics = fn()
    except (torch.OutOfMemoryError, RuntimeError, ValueError, ImportError) as exc:
        rows.append({"impl": impl, "case": case, "metric": "error", "value": None, "unit": "",
                     "error": f"{type(exc).__name__}: {str(exc)[:200]}", **fields})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"{impl:>22} {case:<28} ERROR {type(exc).__name__}: {str(exc)[:120]}", flush=True)
        return
    new = _rows(impl, case, metrics, **fields)
    rows.extend(new)
    print(f"{impl:>22} {case:<28} " + "  ".join(f"{r['metric']}={r['value']}" for r in new), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 64^2, batch 2, tiny models only")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/vil_throughput.json, "
                                                    "outputs/vision/vil_throughput_quick.json with --quick)")
    parser.add_argument("--backends", nargs="+", default=["triton", "torch"], choices=["triton", "torch"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if device.type == "cpu":
        backends, sizes, img, batches, warmup, iters = ["torch"], ["tiny"], 64, {"tiny": 2}, 1, 2
    else:
        backends, sizes, img, warmup, iters = args.backends, args.sizes, 224, 3, 10
        batches = {"tiny": 256, "small": 256, "base": 128}
    rows: list[dict[str, Any]] = []
    for size in sizes:
        batch = batches[size]
        case = f"{size} {img}px bs{batch}"
        for backend in backends:
            _run(rows, f"ours:{backend}", case, lambda: measure(
                f"vil_{size}_patch16_224", {"backend": backend}, img, batch, device, warmup, iters),
                model=f"vil_{size}", img_size=img, batch=batch, backend=backend, dtype="bf16")
        if size == "tiny":
            _run(rows, "ours:torch-einsum-qkv", case, lambda: measure(
                "vil_tiny_patch16_224", {"backend": "torch", "dense_qkv": False}, img, batch, device, warmup,
                iters), model="vil_tiny", img_size=img, batch=batch, backend="torch", dtype="bf16")
        _run(rows, f"timm:deit_{size}_patch16_224", case, lambda: measure(
            f"deit_{size}_patch16_224", {}, img, batch, device, warmup, iters),
            model=f"deit_{size}", img_size=img, batch=batch, dtype="bf16")
    if device.type == "cuda":
        hi, hb = 1024, 8
        for backend in backends:
            _run(rows, f"ours:{backend}", f"tiny {hi}px bs{hb}", lambda: measure(
                "vil_tiny_patch16_224", {"backend": backend}, hi, hb, device, 2, 3),
                model="vil_tiny", img_size=hi, batch=hb, backend=backend, dtype="bf16")
            _run(rows, f"ours:{backend}", f"tiny {hi}px bs{hb} grad-ckpt", lambda: measure(
                "vil_tiny_patch16_224", {"backend": backend}, hi, hb, device, 2, 3, grad_checkpointing=True),
                model="vil_tiny", img_size=hi, batch=hb, backend=backend, dtype="bf16", grad_checkpointing=True)
        _run(rows, "timm:deit_tiny_patch16_224", f"tiny {hi}px bs{hb}", lambda: measure(
            "deit_tiny_patch16_224", {}, hi, hb, device, 2, 3), model="deit_tiny", img_size=hi, batch=hb,
            dtype="bf16")
        if "triton" in backends:
            _run(rows, "ours:triton", "tiny 224px bs8 vs torch", lambda: {
                "max_abs_logit_diff": backend_agreement(224, 8, device)}, model="vil_tiny", img_size=224,
                batch=8, dtype="bf16")
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
              "cpu", "torch": torch.__version__, "triton": triton_version,
              "date": datetime.date.today().isoformat(), "rows": rows}
    out = args.out or ("outputs/vision/vil_throughput_quick.json" if args.quick
                       else "benchmarks/results/vil_throughput.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
