"""Speed and memory of the fused Triton sLSTM/LSTM kernels against baselines measured in the same run.

Baselines: our PyTorch reference loop (`ours:torch`), `torch.nn.LSTM` (cuDNN) at equal hidden size, and the `flashrnn`
package when it is importable. Main case B=16, T=1024, 4 heads x 192 (hidden 768), bf16; sweep over head dim
{64, 128, 256} x batch {1, 16, 64} with 4 heads. Run on a CUDA machine:

    python -m benchmarks.slstm_kernels --out benchmarks/results/slstm_kernels.json [--cases main] [--t 1024]

Writes `{"device", "torch", "triton", "date", "rows": [...]}` and prints a table. "fwd" is inference (no graph kept),
"fwd+bwd" a training step of the operator (gradients of inputs, recurrent weights and bias).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import pathlib

import torch
import triton

from benchmarks.common import peak_memory_mib
from kernels.slstm import reference, tiling
from kernels.slstm.triton import slstm_triton, tuned_tilings

MAIN = {"B": 16, "NH": 4, "DH": 192}
SWEEP = [{"B": b, "NH": 4, "DH": dh} for dh in (64, 128, 256) for b in (1, 16, 64)]


def _inputs(B, T, NH, DH, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    hidden = NH * DH
    x = torch.randn(B, T, 4 * hidden, device="cuda", generator=g).to(dtype)
    w = (torch.randn(4, NH, DH, DH, device="cuda", generator=g) / DH ** 0.5).to(dtype)
    b = torch.zeros(4 * hidden, device="cuda", dtype=dtype)
    dy = torch.randn(B, T, hidden, device="cuda", generator=g).to(dtype)
    return x, w, b, dy


def _median_ms(fn, slow: bool = False) -> float:
    """Median device time of fn; slow functions (the Python loop) get one warm-up and three timed runs."""
    if not slow:
        return triton.testing.do_bench(fn, warmup=50, rep=300, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[1]


def _measure(impl, case, fwd, fwd_bwd, slow=False, **fields):
    rows = []
    for metric, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
        rows.append(dict(impl=impl, case=case, metric=f"{metric}_time", value=_median_ms(fn, slow), unit="ms",
                         **fields))
        rows.append(dict(impl=impl, case=case, metric=f"{metric}_peak_mem", value=peak_memory_mib(fn), unit="MiB",
                         **fields))
    return rows


def _operator_fns(op, x, w, b, dy):
    """fwd (no graph) and fwd+bwd closures of an operator taking (x, w, b) -> h."""
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]

    def fwd():
        with torch.no_grad():
            op(x, w, b)

    def fwd_bwd():
        torch.autograd.grad(op(*leaves), leaves, dy)

    return fwd, fwd_bwd


def bench_case(spec: dict, T: int, dtype, with_reference: bool, cells=("slstm",)) -> list[dict]:
    B, NH, DH = spec["B"], spec["NH"], spec["DH"]
    hidden = NH * DH
    case = f"B{B}_T{T}_NH{NH}_DH{DH}_{str(dtype).split('.')[-1]}"
    fields = {"B": B, "T": T, "NH": NH, "DH": DH, "hidden": hidden, "dtype": str(dtype).split(".")[-1]}
    x, w, b, dy = _inputs(B, T, NH, DH, dtype)
    rows = []
    for cell in cells:
        def ours(x_, w_, b_, cell=cell):
            return slstm_triton(x_, w_, b_, NH, cell=cell)

        rows += _measure("ours:triton", case, *_operator_fns(ours, x, w, b, dy), cell=cell, **fields)
        if with_reference:
            def loop(x_, w_, b_, cell=cell):
                return reference.slstm_recurrent(x_, w_, b_, NH, cell=cell)

            rows += _measure("ours:torch", case, *_operator_fns(loop, x, w, b, dy), slow=True, cell=cell, **fields)
            with torch.no_grad():
                ref = loop(x, w, b).double()
                err = ((slstm_triton(x, w, b, NH, cell=cell).double() - ref).norm() / ref.norm()).item()
            rows.append(dict(impl="ours:triton", case=case, metric="rel_err_h_vs_torch", value=err, unit="1",
                             cell=cell, **fields))
    lstm = torch.nn.LSTM(hidden, hidden, batch_first=True).to("cuda", dtype)
    xl = torch.randn(B, T, hidden, device="cuda", dtype=dtype)
    params = [xl.requires_grad_()] + list(lstm.parameters())

    def cudnn_fwd():
        with torch.no_grad():
            lstm(xl)

    def cudnn_fwd_bwd():
        torch.autograd.grad(lstm(xl)[0], params, dy)

    rows += _measure("torch.nn.LSTM(cuDNN)", case, cudnn_fwd, cudnn_fwd_bwd, cell="lstm", **fields)
    rows += _flashrnn_rows(case, fields)
    return rows


def _flashrnn_rows(case, fields) -> list[dict]:
    """flashrnn is only recorded as (un)available: nothing can be installed on the GPU machine."""
    available = importlib.util.find_spec("flashrnn") is not None
    return [dict(impl="flashrnn", case=case, metric="available", value=int(available), unit="bool", **fields)]


def rank_study(spec: dict, T: int, dtype, top_k: int) -> list[dict]:
    """Measured time per step of the solver's top tilings, per pass, next to the model's estimate.

    The backward is timed as forward + backward with the forward tiling fixed to the solver's first choice.
    """
    B, NH, DH = spec["B"], spec["NH"], spec["DH"]
    x, w, b, dy = _inputs(B, T, NH, DH, dtype)
    lim = tiling.device_limits(x.device)
    elem = 4 if dtype == torch.float32 else 2
    fwd_c = tiling.solve(tiling.Problem(DH, B, NH, elem, "forward"), lim, top_k=top_k)
    bwd_c = tiling.solve(tiling.Problem(DH, B, NH, elem, "backward"), lim, top_k=top_k)
    case = f"B{B}_T{T}_NH{NH}_DH{DH}_{str(dtype).split('.')[-1]}"
    rows = []
    for pass_, cands in (("fwd", fwd_c), ("fwd+bwd", bwd_c)):
        for t in cands:
            pair = (t, bwd_c[0]) if pass_ == "fwd" else (fwd_c[0], t)
            fns = _operator_fns(lambda x_, w_, b_, pair=pair: slstm_triton(x_, w_, b_, NH, tiling=pair), x, w, b, dy)
            try:
                ms = _median_ms(fns[0] if pass_ == "fwd" else fns[1])
            except triton.runtime.errors.OutOfResources as err:
                rows.append({"impl": "ours:triton", "case": case, "metric": f"{pass_}_rank", "value": float("nan"),
                                 "unit": "us/step", "model_us": t.cost_us, "tiling": str(t), "error": str(err)[:200]})
                continue
            rows.append({"impl": "ours:triton", "case": case, "metric": f"{pass_}_rank", "value": ms * 1e3 / T,
                             "unit": "us/step", "model_us": t.cost_us, "tiling": str(t)})
    return rows


def _tiling_label(key: tuple) -> str:
    """Autotuner cache key -> e.g. forward_train_B16_H768_NH4_slstm (keys: pass, B, 4H, NH, dtypes, lstm, ...)."""
    pass_ = key[0] if key[0] == "backward" else f"forward_{'train' if key[7] else 'infer'}"
    return f"{pass_}_B{key[1]}_H{key[2] // 4}_NH{key[3]}_{'lstm' if key[6] else 'slstm'}"


def _table(rows) -> str:
    times = [r for r in rows if r["metric"].endswith("_time")]
    lines = [f"{'case':<28}{'impl':<22}{'cell':<7}{'fwd ms':>10}{'fwd+bwd ms':>12}{'peak MiB':>10}"]
    seen = {}
    for r in times:
        seen.setdefault((r["case"], r["impl"], r.get("cell")), {})[r["metric"]] = r["value"]
    mem = {(r["case"], r["impl"], r.get("cell")): r["value"] for r in rows if r["metric"] == "fwd+bwd_peak_mem"}
    for key, m in seen.items():
        lines.append(f"{key[0]:<28}{key[1]:<22}{key[2]!s:<7}{m.get('fwd_time', float('nan')):>10.2f}"
                     f"{m.get('fwd+bwd_time', float('nan')):>12.2f}{mem.get(key, float('nan')):>10.0f}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/slstm_kernels.json")
    parser.add_argument("--cases", choices=("main", "all"), default="all")
    parser.add_argument("--t", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=0, help="also time the solver's top-N tilings (main case)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = rank_study(MAIN, args.t, torch.bfloat16, args.rank) if args.rank else []
    for r in rows:
        print(f"{r['metric']:<14}{r['value']:8.2f} us/step (model {r['model_us']:.2f})  {r['tiling']}")
    rows += bench_case(MAIN, args.t, torch.bfloat16, with_reference=True, cells=("slstm", "lstm"))
    if args.cases == "all":
        for spec in SWEEP:
            rows += bench_case(spec, args.t, torch.bfloat16, with_reference=False)
    rows += [{"impl": "ours:triton", "case": "tiling", "metric": _tiling_label(k), "value": 0, "unit": "-",
              "tiling": str(v)} for k, v in tuned_tilings().items()]
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                  "date": datetime.date.today().isoformat(), "rows": rows}
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    print(_table(rows))
    return result


if __name__ == "__main__":
    main()
