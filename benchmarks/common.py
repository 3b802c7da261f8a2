"""Shared benchmark plumbing: environment record, CUDA timing, peak memory, the results schema and a table."""
from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch


def environment() -> dict:
    """Device, library versions and date, as the results schema asks (DESIGN.md)."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"device": device, "torch": torch.__version__, "triton": triton_version,
            "date": datetime.date.today().isoformat()}


def peak_memory_mib(fn: Callable[[], object]) -> float:
    """Peak CUDA memory that fn allocates above what was allocated before it (its inputs excluded), in MiB."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# The batch each ViL size is benchmarked at (ViL-B's halved), the same for its layers' ops and its whole steps.
VIL_BATCH = {"tiny": 256, "small": 256, "base": 128}


def vil_embedding_dim(size: str) -> int:
    """The embedding dim of ViL size `size` ("tiny", "small", "base"), from the models' own table (vision.vil)."""
    from vision.vil import SIZES

    return SIZES[size]["embed_dim"]


def packed_layer_widths(embedding_dim: int, num_heads: int) -> tuple[int, int, int, int]:
    """(inner, up-projection width, q/k GEMM width, v view width) of a ViL-style pre-up mLSTM layer (grid conv, dense
    q/k/v) as `xlstm_core.mlstm_layer.fold_weights` lays out its two GEMM outputs, [x_inner | z | v | v's gate shares
    | padding] and [q | k | their gate shares | padding]: the strides the layer's kernels read, from the layer itself.
    The cell's v view is the up-projection's columns [2 * inner, 2 * inner + v view width)."""
    from xlstm_core.config import xLSTMBlockStackConfig
    from xlstm_core.mlstm_layer import fold_weights, mLSTMPreUpLayer

    cfg = xLSTMBlockStackConfig(embedding_dim=embedding_dim, num_heads=num_heads, num_blocks=1, conv_mode="grid2d",
                                conv_kernel_size=3, dense_qkv=True)
    with torch.device("meta"):
        folded = fold_weights([mLSTMPreUpLayer(cfg)])[0]
    return cfg.inner_dim, folded.w_up.shape[0], folded.w_conv.shape[1], folded.w_inner.shape[1]


def max_rel_err(outs, refs) -> float:
    """The largest ||a - b|| / ||b|| over pairs of tensors: how far a tile config's outputs are from a reference's."""
    return max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(outs, refs))


def graph_ms(fn: Callable[[], object], calls: int = 20) -> float:
    """GPU ms per call of fn: `calls` calls captured in one CUDA graph, its replays timed (median of
    triton.testing.do_bench). Without the graph, ops of ~0.1 ms that enqueue a few kernels measure the host."""
    import triton

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return triton.testing.do_bench(graph.replay, warmup=10, rep=100, return_mode="median") / calls


def gpu_kernel_time(prof) -> tuple[float, int]:
    """(ms, launches) of the GPU kernels a torch.profiler run recorded, by their own time."""
    from torch.autograd import DeviceType

    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    return sum(e.self_device_time_total for e in kernels) / 1e3, sum(e.count for e in kernels)


def kernel_ms(fn: Callable[[], object], min_ms: float = 0.0) -> dict[str, float]:
    """GPU ms per kernel name (its first 40 characters) of one call of fn (after one warm-up call), from
    torch.profiler; kernels that take at most min_ms are left out."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key[:40]: round(e.self_device_time_total / 1e3, 4) for e in prof.key_averages()
            if e.self_device_time_total > min_ms * 1e3}


def row(impl: str, case: str, metric: str, value, unit: str, **fields) -> dict:
    return {"impl": impl, "case": case, "metric": metric, "value": value, "unit": unit, **fields}


def tile_sweep(case: str, pinned, candidates, timed: Callable, rows: list[dict], field: str = "config",
               tolerance: float = 1e-5) -> tuple[float, object]:
    """Time a kernel's pinned config (the baseline, measured in the same run) and every other candidate with
    `timed(config) -> (us, outputs)`; each candidate's outputs must match the pinned config's within `tolerance`
    (max_rel_err over the non-empty tensors). Appends a row per config and one for the best; returns (us, config) of
    the best and prints it."""
    nonempty = lambda outs: [t for t in outs if t.numel()]
    pinned_us, reference = timed(pinned)
    rows.append(row("ours:triton pinned", case, "time", pinned_us, "us", **{field: pinned}))
    best = (pinned_us, pinned)
    for config in candidates:
        if config == pinned:
            continue
        us, outs = timed(config)
        err = max_rel_err(nonempty(outs), nonempty(reference))
        if err > tolerance:
            raise AssertionError(f"{case} {config}: outputs differ from the pinned config's by {err:.2e}")
        rows.append(row("ours:triton candidate", case, "time", us, "us", **{field: config}))
        best = min(best, (us, config))
    rows.append(row("ours:triton best", case, "time", best[0], "us", **{field: best[1]}))
    print(f"{case}: pinned {pinned} {pinned_us:.1f} us, best {best[1]} {best[0]:.1f} us", flush=True)
    return best


@contextlib.contextmanager
def settings(module, **values) -> Iterator[None]:
    """Module-level kernel settings (tiles, splits) replaced by `values` inside the block, restored after it, so
    that a sweep times a candidate through the op's own launch code."""
    saved = {name: getattr(module, name) for name in values}
    for name, value in values.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def save_sweep(path: str | Path, rows: list[dict]) -> Path:
    """Write a tile sweep's rows, then print its pinned and best configs per case. Written first, so that a closed
    pipe (`| head`) loses no measurement."""
    written = write_results(path, rows)
    print("wrote", written)
    print_table([r for r in rows if r["impl"] != "ours:triton candidate"])
    return written


def write_results(path: str | Path, rows: list[dict], **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**environment(), **extra, "rows": rows}, indent=1))
    return path


def print_table(rows: list[dict]) -> None:
    """One line per (case, metric) with the implementations side by side."""
    impls = sorted({r["impl"] for r in rows})
    keys = sorted({(r["case"], r["metric"], r["unit"]) for r in rows}, key=str)
    width = max([len(i) for i in impls] + [12])
    print(f"{'case':32s} {'metric':18s} " + " ".join(f"{i:>{width}s}" for i in impls))
    for case, metric, unit in keys:
        values = {r["impl"]: r["value"] for r in rows if (r["case"], r["metric"], r["unit"]) == (case, metric, unit)}
        cells = []
        for impl in impls:
            v = values.get(impl)
            cells.append(f"{'-' if v is None else (f'{v:.3g}' if isinstance(v, (int, float)) else str(v)):>{width}s}")
        print(f"{case:32s} {metric + ' [' + unit + ']':18s} " + " ".join(cells))
