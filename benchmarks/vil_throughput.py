"""ViL vs DeiT throughput and memory, measured in one run.

    python benchmarks/vil_throughput.py                 # GPU: 224^2 bf16, ViL-T/S/B (triton, torch) vs DeiT-T/S/B,
                                                        # plus 1024^2 batch 8; writes benchmarks/results/vil_throughput.json
    python benchmarks/vil_throughput.py --quick         # CPU smoke run at 64^2 (a few seconds per model)
    python benchmarks/vil_throughput.py --compile       # also each size's ViL and DeiT under torch.compile (same run)
    python benchmarks/vil_throughput.py --compile --compile-modes default reduce-overhead   # and with CUDA graphs
    python benchmarks/vil_throughput.py --sizes tiny --no-eager --no-hires --compile   # the compiled rows only
    python benchmarks/vil_throughput.py --sizes small base --backends triton --no-eager --no-hires --compile \
        --compile-modes reduce-overhead                 # ViL-S / ViL-B with CUDA graphs: their eager steps are
                                                        # bound by host launches, which vary from machine to machine
    python benchmarks/vil_throughput.py --profile       # only print the top-25 GPU kernels of a ViL-T train and
                                                        # inference step (torch.profiler)
    python benchmarks/vil_throughput.py --chain         # also time ViL-T's norm + skip + SiLU(z) chain for one block:
                                                        # PyTorch vs fused Triton, eager and compiled

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
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm

from benchmarks.common import VIL_BATCH, gpu_kernel_time

# importing vision also registers the ViL models with timm
from vision.throughput import synthetic_steps
from xlstm_core import norm_gate

SIZES = ("tiny", "small", "base")
GIB = 2**30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], None], warmup: int, iters: int, device: torch.device) -> tuple[float, float | None]:
    """Seconds per step (mean over `iters` after `warmup`) and peak GiB allocated from the first warm-up step on.
    Reset after the warm-up, the peak of a CUDA-graph step (compile mode reduce-overhead) read ~0.2 GiB for a
    ViL-T training step that needs ~10: graph replays allocate nothing, the capture in the warm-up does."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / iters
    peak = torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None
    return seconds, peak


def measure(name: str, kwargs: dict[str, Any], img: int, batch: int, device: torch.device, warmup: int, iters: int,
            train: bool = True, grad_checkpointing: bool = False, compile: bool = False,
            compile_mode: str | None = None) -> dict[str, float]:
    """Images/s and peak memory for inference and (optionally) training of timm model `name`."""
    infer, train_step = synthetic_steps(name, kwargs, img, batch, device, grad_checkpointing=grad_checkpointing,
                                        compile=compile, compile_mode=compile_mode)
    out: dict[str, float] = {}
    seconds, peak = _timed(infer, warmup, iters, device)
    out["infer_img_per_s"] = batch / seconds
    if peak is not None:
        out["infer_peak_mem_gib"] = peak
    if train:
        seconds, peak = _timed(train_step, warmup, iters, device)
        out["train_img_per_s"] = batch / seconds
        if peak is not None:
            out["train_peak_mem_gib"] = peak
    return out


def profile(name: str, kwargs: dict[str, Any], img: int, batch: int, device: torch.device, rows: int = 25,
            compile_mode: str | None = None) -> None:
    """Print the `rows` GPU kernels that take the most time in one inference and one training step (after warm-up);
    with `compile_mode`, of the model under torch.compile in that mode."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps = synthetic_steps(name, kwargs, img, batch, device, compile=compile_mode is not None,
                            compile_mode=compile_mode)
    for label, step in zip(("inference", "training"), steps):
        for _ in range(3):
            step()
        _sync(device)
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            step()
            _sync(device)
            wall = time.perf_counter() - start
        ms, launches = gpu_kernel_time(prof)
        mode = "" if compile_mode is None else f" (compiled, {compile_mode})"
        print(f"== {name} {label} step{mode}, {img}px batch {batch}: GPU kernel time {ms:.1f} ms in {launches} "
              f"kernels; step wall time {wall * 1e3:.1f} ms (under the profiler)")
        print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70))


@torch.no_grad()
def backend_agreement(img: int, batch: int, device: torch.device) -> float:
    """max |difference| / max |value| of ViL-T's pre-logit features (same weights, bf16 autocast) between the Triton
    and PyTorch backends (the logits of a fresh model are ~1e-4, too small to compare)."""
    torch.manual_seed(0)
    models = [timm.create_model("vil_tiny_patch16_224", img_size=img, backend=b).to(device).eval()
              for b in ("torch", "triton")]
    models[1].load_state_dict(models[0].state_dict())
    x = torch.randn(batch, 3, img, img, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        torch_out, triton_out = (m.forward_head(m.forward_features(x), pre_logits=True).float() for m in models)
    return ((torch_out - triton_out).abs().max() / torch_out.abs().max()).item()


def chain_timing(device: torch.device, backend: str, compiled: bool) -> dict[str, float]:
    """Forward and forward + backward ms of ViL-T's output chain (norm_gate.norm_skip_gate) for one block: B=256,
    196 tokens, 4 heads of 96, bf16 activations, fp32 parameters, with the conv branch's SiLU before it and the
    bf16 cast after it (what inductor fuses with it in the layer). Compiled with backend="triton" is the fused op
    inside the compiled graph (norm_gate.COMPILED_USES_TRITON set for the run)."""
    from triton.testing import do_bench

    B, T, NH, DH = 256, 196, 4, 96
    inner = NH * DH

    def leaf(*shape: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype, requires_grad=True)

    leaves = (leaf(B, T, NH, DH), leaf(B, inner, T), leaf(B, T, 2 * inner),
              *(leaf(inner, dtype=torch.float32) for _ in range(3)))
    dy = torch.randn(B, T, inner, device=device, dtype=torch.bfloat16)

    def chain(h, conv, up, weight, bias, skip):
        return norm_gate.norm_skip_gate(h, F.silu(conv.transpose(1, 2)), up.chunk(2, dim=-1)[1], weight, bias, skip,
                                        backend=backend).to(torch.bfloat16)

    default = norm_gate.COMPILED_USES_TRITON
    norm_gate.COMPILED_USES_TRITON = backend == "triton"
    try:
        fn = torch.compile(chain) if compiled else chain
        with torch.no_grad():
            fwd = do_bench(lambda: fn(*leaves), warmup=25, rep=100, return_mode="median")
        fwd_bwd = do_bench(lambda: torch.autograd.grad(fn(*leaves), leaves, dy), warmup=25, rep=100,
                           return_mode="median")
    finally:
        norm_gate.COMPILED_USES_TRITON = default
    return {"fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}


UNITS = {"img_per_s": "img/s", "mem_gib": "GiB", "feature_diff": "rel", "_ms": "ms"}


def _rows(impl: str, case: str, metrics: dict[str, float], **fields: Any) -> list[dict[str, Any]]:
    return [{"impl": impl, "case": case, "metric": key, "value": float(f"{value:.5g}"),
             "unit": next(u for suffix, u in UNITS.items() if key.endswith(suffix)), **fields}
            for key, value in metrics.items()]


def _run(rows: list, save: Callable[[], None], impl: str, case: str, fn: Callable[[], dict[str, float]],
         **fields: Any) -> None:
    """Measure one configuration; an out-of-memory or kernel failure becomes an "error" row, not a crash.
    The results file is rewritten after every configuration, so a run cut short keeps what it measured."""
    try:
        metrics = fn()
    except (torch.OutOfMemoryError, RuntimeError, ValueError, ImportError) as exc:
        rows.append({"impl": impl, "case": case, "metric": "error", "value": None, "unit": "",
                     "error": f"{type(exc).__name__}: {str(exc)[:200]}", **fields})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        print(f"{impl:>22} {case:<28} ERROR {type(exc).__name__}: {str(exc)[:120]}", flush=True)
        save()
        return
    new = _rows(impl, case, metrics, **fields)
    rows.extend(new)
    save()
    print(f"{impl:>22} {case:<28} " + "  ".join(f"{r['metric']}={r['value']}" for r in new), flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CPU smoke run: 64^2, batch 2, tiny models only")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/vil_throughput.json, "
                                                    "outputs/vision/vil_throughput_quick.json with --quick)")
    parser.add_argument("--backends", nargs="+", default=["triton", "torch"], choices=["triton", "torch"])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--compile", action="store_true",
                        help="also measure ViL and DeiT of each --sizes under torch.compile")
    parser.add_argument("--compile-modes", nargs="+", default=["default"],
                        choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                        help="torch.compile modes for --compile (reduce-overhead adds CUDA graphs; "
                             "max-autotune-no-cudagraphs autotunes inductor's GEMM and conv templates, which kept "
                             "ViL-T compiling for over 5 minutes on an H100)")
    parser.add_argument("--profile", action="store_true",
                        help="print the top GPU kernels of ViL-T steps and exit (compiled in the first "
                             "--compile-modes mode with --compile)")
    parser.add_argument("--chain", action="store_true", help="also time ViL-T's norm-gate chain (GPU, one block)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager 224^2 rows (e.g. a compiled-only run)")
    parser.add_argument("--no-hires", action="store_true", help="skip the 1024^2 batch-8 rows")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if args.profile:
        profile("vil_tiny_patch16_224", {}, 64 if args.quick else 224, 2 if args.quick else 256, device,
                compile_mode=args.compile_modes[0] if args.compile else None)
        return {}
    if device.type == "cpu":
        backends, sizes, img, batches, warmup, iters = ["torch"], ["tiny"], 64, {"tiny": 2}, 1, 2
    else:
        backends, sizes, img, warmup, iters = args.backends, args.sizes, 224, 3, 10
        batches = VIL_BATCH
    out = args.out or ("outputs/vision/vil_throughput_quick.json" if args.quick
                       else "benchmarks/results/vil_throughput.json")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    rows: list[dict[str, Any]] = []
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or
              "cpu", "torch": torch.__version__, "triton": triton_version,
              "date": datetime.date.today().isoformat(), "rows": rows}

    def save() -> None:
        with open(out, "w") as f:
            json.dump(result, f, indent=1)

    for size in () if args.no_eager else sizes:
        batch = batches[size]
        case = f"{size} {img}px bs{batch}"
        for backend in backends:
            _run(rows, save, f"ours:{backend}", case, lambda: measure(
                f"vil_{size}_patch16_224", {"backend": backend}, img, batch, device, warmup, iters),
                model=f"vil_{size}", img_size=img, batch=batch, backend=backend, dtype="bf16")
        if size == "tiny" and "torch" in backends:
            _run(rows, save, "ours:torch-einsum-qkv", case, lambda: measure(
                "vil_tiny_patch16_224", {"backend": "torch", "dense_qkv": False}, img, batch, device, warmup,
                iters), model="vil_tiny", img_size=img, batch=batch, backend="torch", dtype="bf16")
        _run(rows, save, f"timm:deit_{size}_patch16_224", case, lambda: measure(
            f"deit_{size}_patch16_224", {}, img, batch, device, warmup, iters),
            model=f"deit_{size}", img_size=img, batch=batch, dtype="bf16")
        if size == "tiny" and "torch" in backends:
            _run(rows, save, "ours:torch", f"{case} parallel", lambda: measure(
                "vil_tiny_patch16_224", {"backend": "torch", "mlstm_form": "parallel"}, img, batch, device, warmup,
                iters), model="vil_tiny", img_size=img, batch=batch, backend="torch", dtype="bf16",
                mlstm_form="parallel")
    if device.type == "cuda" and not args.no_hires:
        hi, hb = 1024, 8
        for backend in backends:
            _run(rows, save, f"ours:{backend}", f"tiny {hi}px bs{hb}", lambda: measure(
                "vil_tiny_patch16_224", {"backend": backend}, hi, hb, device, 2, 3),
                model="vil_tiny", img_size=hi, batch=hb, backend=backend, dtype="bf16")
            _run(rows, save, f"ours:{backend}", f"tiny {hi}px bs{hb} grad-ckpt", lambda: measure(
                "vil_tiny_patch16_224", {"backend": backend}, hi, hb, device, 2, 3, grad_checkpointing=True),
                model="vil_tiny", img_size=hi, batch=hb, backend=backend, dtype="bf16", grad_checkpointing=True)
        _run(rows, save, "timm:deit_tiny_patch16_224", f"tiny {hi}px bs{hb}", lambda: measure(
            "deit_tiny_patch16_224", {}, hi, hb, device, 2, 3), model="deit_tiny", img_size=hi, batch=hb,
            dtype="bf16")
        if "triton" in backends:
            _run(rows, save, "ours:triton", "tiny 224px bs8 vs torch", lambda: {
                "max_rel_feature_diff": backend_agreement(224, 8, device)}, model="vil_tiny", img_size=224,
                batch=8, dtype="bf16")
    if args.chain and device.type == "cuda":
        for compiled in (False, True):
            for backend in ("torch", "triton"):
                _run(rows, save, f"ours:{backend}", "norm-gate chain 1 block bs256" + " compiled" * compiled,
                     lambda b=backend, c=compiled: chain_timing(device, b, c), model="vil_tiny", batch=256,
                     dtype="bf16", backend=backend, compiled=compiled)
    compiled_runs = [(size, mode) for size in sizes for mode in args.compile_modes] if args.compile else []
    for size, mode in compiled_runs:  # last: compile times vary
        batch = batches[size]
        case = f"{size} {img}px bs{batch} compiled" + ("" if mode == "default" else f" {mode}")
        # the default form ("auto"): the fused Triton parallel kernel, or inductor's parallel form on PyTorch
        variants = [(f"ours:{backend}", f"vil_{size}_patch16_224", {"backend": backend}) for backend in backends]
        variants.insert(1, (f"timm:deit_{size}_patch16_224", f"deit_{size}_patch16_224", {}))
        for impl, name, kwargs in variants:
            _run(rows, save, impl, case, lambda: measure(name, kwargs, img, batch, device, warmup, iters,
                                                        compile=True, compile_mode=mode),
                 model=name.split("_patch")[0], img_size=img, batch=batch, dtype="bf16", compiled=True,
                 compile_mode=mode, **kwargs)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
