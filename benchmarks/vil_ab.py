"""A/B of ViL throughput between source trees of this project, each arm in its own process.

A change of 0.5-2% is what most speed work on ViL now yields, less than the drift of a GPU between calls. So the arms
run on one machine, alternating within each round, their order flipped every round, and each arm's process builds,
compiles and times the model from its own tree: CUDA graphs (torch.compile mode "reduce-overhead"), bf16 autocast,
batch 256 at 224², 5 warm-up steps and `--runs` timed runs of `--steps` steps. The first arm named is the baseline;
the table gives each arm's median img/s per size and mode and its change against the baseline's. Writes JSON
(results schema of DESIGN.md) with every run.

    python -m benchmarks.vil_ab --arms base=.scratch/base head=. [--sizes tiny small] [--modes train infer]
        [--rounds 2] [--out benchmarks/results/vil_ab.json]

A tree is any copy of the project (`git worktree add`, or `git archive REV | tar -x -C DIR` for a device run, whose
copy of the checkout has no .git). Its process imports only `vision.throughput.synthetic_steps` from it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import VIL_BATCH, write_results

MODES = ("train", "infer")
RESULT_TAG = "VIL_AB_RESULT "

# Run by `python -c` in the arm's tree (sys.argv: size, modes, batch, runs, steps), so that an old tree needs nothing
# of this file. Prints one tagged JSON line: img/s per timed run, per mode.
WORKER = """
import json, sys, time
import torch
sys.path.insert(0, ".")
from vision.throughput import synthetic_steps

size, modes, batch, runs, steps = sys.argv[1], sys.argv[2].split(","), *map(int, sys.argv[3:6])
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
infer, train = synthetic_steps(f"vil_{size}_patch16_224", {"backend": "triton"}, 224, batch, device, compile=True,
                               compile_mode="reduce-overhead")
result = {}
for mode in modes:
    step = train if mode == "train" else infer
    for _ in range(5):
        step()
    sync()
    result[mode] = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        result[mode].append(batch * steps / (time.perf_counter() - start))
print(%r + json.dumps(result), flush=True)
""" % RESULT_TAG


def parse_arms(specs: list[str]) -> dict[str, Path]:
    """`name=path` pairs, in order, each path a tree with a `vision` package."""
    arms = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"an arm is name=path, got {spec!r}")
        if name in arms:
            raise ValueError(f"arm {name!r} is named twice")
        if not (Path(path) / "vision" / "throughput.py").is_file():
            raise ValueError(f"arm {name!r}: {path} is not a tree of this project (no vision/throughput.py)")
        arms[name] = Path(path).resolve()
    if len(arms) < 2:
        raise ValueError(f"an A/B needs at least two arms, got {len(arms)}")
    return arms


def arm_order(names: list[str], round_index: int) -> list[str]:
    """The arms' order in a round: as given in even rounds, reversed in odd ones."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def run_rounds(arms: dict[str, Path], sizes: list[str], rounds: int,
               launch: Callable[[Path, str], dict[str, list[float]] | None]) -> list[dict]:
    """One record per (round, size, arm) in the order run: `launch(tree, size)` gives img/s per mode, or None where
    the process failed (it is recorded as failed and the A/B goes on)."""
    records = []
    for r in range(rounds):
        for size in sizes:
            for name in arm_order(list(arms), r):
                result = launch(arms[name], size)
                records.append({"round": r, "size": size, "arm": name, "ok": result is not None, **(result or {})})
                print(f"round {r} {size} {name}: {result}", flush=True)
    return records


def summarise(records: list[dict], arms: list[str], sizes: list[str], modes: list[str]) -> list[dict]:
    """Per size, mode and arm: the median over every timed run of every round (img/s), and its change against the
    first arm's (%). Arms without a successful run are left out."""
    rows = []
    for size in sizes:
        for mode in modes:
            medians = {}
            for name in arms:
                values = [v for rec in records if rec["arm"] == name and rec["size"] == size and rec["ok"]
                          for v in rec.get(mode, [])]
                if values:
                    medians[name] = statistics.median(values)
            base = medians.get(arms[0])
            for name, value in medians.items():
                change = None if base is None else round(100 * (value / base - 1), 2)
                rows.append({"impl": f"ours:triton {name}", "case": f"vil_{size}_patch16_224 {mode}",
                             "metric": "img_per_s median", "value": round(value, 1), "unit": "img/s",
                             "change_pct": change})
    return rows


def launch_worker(tree: Path, size: str, modes: list[str], batch: int, runs: int, steps: int,
                  timeout: float) -> dict[str, list[float]] | None:
    """Run WORKER in `tree`; its tagged result, or None (with its output's tail printed) if it failed."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-c", WORKER, size, ",".join(modes), str(batch), str(runs), str(steps)]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"{tree} {size}: no result within {timeout:.0f} s", flush=True)
        return None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    print(f"{tree} {size}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-2000:]}", flush=True)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", required=True, help="name=tree, the baseline first")
    parser.add_argument("--sizes", nargs="+", default=["tiny"], choices=list(VIL_BATCH))
    parser.add_argument("--modes", nargs="+", default=["train"], choices=MODES)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per arm process, compilation included")
    parser.add_argument("--out", default="benchmarks/results/vil_ab.json")
    args = parser.parse_args()
    try:
        arms = parse_arms(args.arms)
    except ValueError as err:
        parser.error(str(err))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    launch = lambda tree, size: launch_worker(tree, size, args.modes, args.batch, args.runs, args.steps,
                                              args.timeout)
    records = run_rounds(arms, args.sizes, args.rounds, launch)
    rows = summarise(records, list(arms), args.sizes, args.modes)
    print(f"{'case':32s} {'arm':24s} {'img/s':>10s} {'change':>8s}")
    for r in rows:
        change = "" if r["change_pct"] is None else f"{r['change_pct']:+.2f}%"
        print(f"{r['case']:32s} {r['impl']:24s} {r['value']:>10.1f} {change:>8s}")
    print("wrote", write_results(args.out, rows, arms={n: str(p) for n, p in arms.items()}, batch=args.batch,
                                 runs=records))


if __name__ == "__main__":
    main()
