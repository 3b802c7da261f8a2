"""Per-step action latency / throughput of LRAM (recurrent step) vs the Decision Transformer (KV cache).

For each history length L (timesteps already seen) and batch B (parallel envs) it times one `ActionModel.step`
(token embedding, backbone, shared action head): LRAM carries a fixed-size recurrent state whatever L is; DT holds
a KV cache of L + 1 slots and attends over all of them. On CUDA both steps are captured in a CUDA graph with static
buffers (`rl.inference.GraphedStep`), in bf16; peak memory is measured per case and OOM is recorded as such.
The state values do not change the work of a step, so the history is a fresh LRAM state and random DT keys/values.

    python benchmarks/lram_latency.py --compile  # GPU: ~160M-param LRAM (24 pre-up blocks) vs 12-layer DT,
                                                 # L in {1k, 4k, 8k, 16k, 64k}, B in {1, 16, 128}; + compiled steps
    python benchmarks/lram_latency.py --compile --mlstm-block post_up --blocks 12 \
        --out benchmarks/results/lram_latency_post_up.json   # the xLSTM-7B block: fewer, fused kernels per step
    python benchmarks/lram_latency.py --quick    # tiny CPU check
Writes benchmarks/results/lram_latency.json (schema in DESIGN.md) and prints a table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from rl.inference import GraphedStep, state_tensors
from rl.model import ActionModel, ActionModelConfig
from xlstm_core.config import XLSTM7B_STYLE


def step_inputs(model: ActionModel, batch: int, device, dtype) -> dict[str, torch.Tensor]:
    """A continuous-control step batch (vector observation, 8 action rows)."""
    a, nb = model.cfg.max_action_dims, model.cfg.num_bins
    return {"obs": torch.randn(batch, 1, model.cfg.max_obs_dim, device=device, dtype=dtype),
            "is_image": torch.zeros(batch, dtype=torch.bool, device=device),
            "prev_actions": torch.randint(nb, (batch, 1, a), device=device),
            "first": torch.zeros(batch, 1, dtype=torch.bool, device=device),
            "prev_rewards": torch.randn(batch, 1, device=device, dtype=dtype),
            "rtg": torch.randn(batch, 1, device=device, dtype=dtype),
            "action_mask": torch.ones(batch, a, nb, dtype=torch.bool, device=device)}


def make_state(model: ActionModel, inputs: dict, context: int, device, dtype):
    """The inference state after ``context`` steps of history (see the module docstring)."""
    batch = inputs["obs"].shape[0]
    if model.cfg.backbone == "lram":
        with torch.no_grad():
            _, state = model.step(inputs, None)
        return state
    cache = model.init_state(batch, context + 1, device, dtype)
    cache.k.normal_()
    cache.v.normal_()
    cache.pos.fill_(context)
    return cache


def time_case(model: ActionModel, context: int, batch: int, device, dtype, iters: int, graph: bool,
              compile: bool = False) -> dict:
    """Median step latency (ms) and peak / state memory (MiB) of one (context, batch) case."""
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    inputs = step_inputs(model, batch, device, dtype)
    state = make_state(model, inputs, context, device, dtype)
    state_mib = sum(t.numel() * t.element_size() for t in state_tensors(state)) / 2**20
    if model.cfg.backbone == "dt":
        run_eager = lambda: model.step(inputs, state)
        reset = lambda: state.pos.fill_(context)  # every timed step sees exactly L cached steps
    else:
        holder = [state]
        reset = lambda: None

        def run_eager():
            out, holder[0] = model.step(inputs, holder[0])
            return out

    step = GraphedStep(model, inputs, state, compile=compile) if graph else None
    call = step if step is not None else run_eager
    times = []
    with torch.no_grad():
        for i in range(iters + 3):
            reset()
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            call()
            if cuda:
                torch.cuda.synchronize(device)
            if i >= 3:
                times.append(time.perf_counter() - t0)
    latency = sorted(times)[len(times) // 2] * 1e3
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
    return {"latency_ms": latency, "throughput": batch / latency * 1e3, "peak_mib": peak, "state_mib": state_mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and contexts (CPU smoke run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--blocks", type=int, default=24)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--slstm-share", type=float, default=0.0)
    parser.add_argument("--mlstm-block", choices=["pre_up", "post_up"], default="pre_up",
                        help="pre_up: the xLSTM-paper block LRAM used; post_up: the xLSTM-7B block (mLSTM + FFN)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 8192, 16384, 65536])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--no-graph", action="store_true", help="time eager steps even on CUDA")
    parser.add_argument("--compile", action="store_true", help="also time both models with a torch.compile'd step "
                        "inside the CUDA graph")
    parser.add_argument("--compile-batches", type=int, nargs="+", default=[1],
                        help="batches of the compiled variants (each DT context and batch is one more compilation)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lram_latency.json"))
    args = parser.parse_args()
    if args.quick:
        args.dim, args.blocks, args.heads, args.contexts, args.batches, args.iters = 64, 2, 4, [64, 256], [1, 4], 5
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    graph = device.type == "cuda" and not args.no_graph
    torch.manual_seed(0)
    base = {"embedding_dim": args.dim, "num_blocks": args.blocks, "num_heads": args.heads,
            "slstm_share": args.slstm_share, "dropout": 0.0,
            "stack_overrides": dict(XLSTM7B_STYLE) if args.mlstm_block == "post_up" else {}}
    lram = ActionModel(ActionModelConfig(backbone="lram", **base)).to(device, dtype).eval()
    dt = ActionModel(ActionModelConfig(backbone="dt", **base)).to(device, dtype).eval()
    backend = "triton" if device.type == "cuda" else "torch"
    ours = f"ours:{backend}" + ("" if args.mlstm_block == "pre_up" else f"-{args.mlstm_block}")
    variants = [(ours, lram, False), ("decision-transformer-kvcache", dt, False)]
    if args.compile and graph:
        variants += [(f"{ours}+compile", lram, True), ("decision-transformer-kvcache+compile", dt, True)]
    rows = []
    for impl, model, compiled in variants:
        params = sum(p.numel() for p in model.parameters())
        for context in args.contexts:
            for batch in args.compile_batches if compiled else args.batches:
                fields = {"context": context, "batch": batch, "params": params, "dtype": str(dtype).split(".")[-1],
                          "cuda_graph": graph, "compile": compiled}
                case = f"ctx{context}_b{batch}"
                try:
                    result = time_case(model, context, batch, device, dtype, args.iters, graph, compiled)
                except torch.cuda.OutOfMemoryError:
                    rows.append({"impl": impl, "case": case, "metric": "step_latency", "value": None, "unit": "oom",
                                 **fields})
                    continue
                for metric, key, unit in [("step_latency", "latency_ms", "ms"), ("throughput", "throughput",
                                                                                  "actions/s"),
                                          ("peak_memory", "peak_mib", "MiB"), ("state_memory", "state_mib", "MiB")]:
                    rows.append({"impl": impl, "case": case, "metric": metric, "value": result[key], "unit": unit,
                                 **fields})
    rows += speedup_rows(rows)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "triton": _triton_version(), "date": datetime.date.today().isoformat(),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print_table(rows)
    print(f"wrote {out}")


def speedup_rows(rows: list[dict]) -> list[dict]:
    """Per (context, batch) each of our variants' speedup over the fastest DT variant measured in this run (graph,
    with or without compile): DT's best way of running, as the issue's ">= 5x DT" asks."""
    latency = {(r["impl"], r["context"], r["batch"]): r for r in rows
               if r["metric"] == "step_latency" and r["value"] is not None}
    out = []
    for (impl, context, batch), r in latency.items():
        if impl.startswith("decision-transformer"):
            continue
        dts = [d for (name, c, b), d in latency.items() if name.startswith("decision-transformer")
               and (c, b) == (context, batch)]
        if not dts:
            continue
        best = min(dts, key=lambda d: d["value"])
        out.append({**r, "metric": "speedup_vs_best_dt", "value": best["value"] / r["value"], "unit": "x",
                    "dt_impl": best["impl"], "dt_latency_ms": best["value"]})
    return out


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


def print_table(rows: list[dict]) -> None:
    """One line per (impl, context, batch): latency, throughput, peak and state memory."""
    cases: dict[tuple, dict] = {}
    for r in rows:
        cases.setdefault((r["impl"], r["context"], r["batch"], r["params"]), {})[r["metric"]] = r
    print(f"{'impl':32s} {'params':>11s} {'context':>8s} {'batch':>6s} {'ms/step':>9s} {'actions/s':>11s} "
          f"{'peak MiB':>9s} {'state MiB':>10s}")
    for (impl, context, batch, params), m in cases.items():
        lat = m["step_latency"]
        if lat["unit"] == "oom":
            print(f"{impl:32s} {params:11d} {context:8d} {batch:6d} {'OOM':>9s}")
            continue
        speedup = m.get("speedup_vs_best_dt")
        print(f"{impl:32s} {params:11d} {context:8d} {batch:6d} {lat['value']:9.3f} "
              f"{m['throughput']['value']:11.1f} {m['peak_memory']['value']:9.1f} {m['state_memory']['value']:10.2f}"
              + ("" if speedup is None else f"  {speedup['value']:.2f}x best DT ({speedup['dt_impl']})"))


if __name__ == "__main__":
    main()
