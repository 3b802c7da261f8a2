"""Multi-GPU scaling through torchrun + DDP: ViL-T and DeiT-T training images/s and LRAM training sequences/s on
1..N GPUs of one host, each against its own 1-GPU run in the same invocation.

    python -m benchmarks.ddp_scaling --gpus 1 2 --rl-datasets DIR   # DIR: Minari datasets from
        # `python -m experiments.rl stage=data 'tasks=[cartpole,pendulum,acrobot]' datasets_dir=DIR`
    python -m benchmarks.ddp_scaling --gpus 1 2 --skip-rl           # vision only

Writes benchmarks/results/ddp_scaling.json (and the torchrun logs beside the JSON's --logs folder) and prints a
table. Vision: synthetic batches of 256 images per GPU (`experiments.vision mode=throughput`, no data loading).
LRAM: `experiments.rl stage=train scale=gpu` on the given datasets, 128 sequences per GPU, rate from the logged
step times after the first logging interval (which holds start-up and compilation).
"""
from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.common import print_table, row, write_results

VISION_MODELS = ("vil_tiny_patch16_224", "deit_tiny_patch16_224")
VISION_LINE = re.compile(r"([\d.]+) img/s in total")


def torchrun(gpus: int, args: list[str], log: Path, timeout: int) -> None:
    """One torchrun launch; its output goes to `log`, a failure raises with the log's path."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}", *args]
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")


def vision_images_per_second(log: Path) -> float:
    """The total training images/s that `experiments.vision mode=throughput` printed."""
    found = VISION_LINE.findall(log.read_text())
    if not found:
        raise ValueError(f"no 'img/s in total' line in {log}")
    return float(found[-1])


def rl_sequences_per_second(metrics_csv: Path, gpus: int, batch_per_gpu: int) -> float:
    """Sequences/s over all GPUs between the first and the last logged step of an rl training run."""
    with metrics_csv.open() as f:
        rows = list(csv.DictReader(f))
    if len(rows) < 2:
        raise ValueError(f"{metrics_csv} needs at least two logged steps, has {len(rows)}")
    steps = int(rows[-1]["step"]) - int(rows[0]["step"])
    seconds = float(rows[-1]["seconds"]) - float(rows[0]["seconds"])
    return gpus * batch_per_gpu * steps / seconds


def scaling_rows(impl: str, metric: str, unit: str, rates: dict[int, float]) -> list[dict]:
    """Rate and speed-up over the 1-GPU run for every GPU count."""
    base = rates[min(rates)]
    out = []
    for gpus, rate in sorted(rates.items()):
        out.append(row(impl, f"{gpus} GPU", metric, round(rate, 1), unit, gpus=gpus))
        out.append(row(impl, f"{gpus} GPU", "speed-up", round(rate / base, 3), "x", gpus=gpus))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rl-datasets", type=Path, help="folder of Minari datasets for the LRAM run")
    parser.add_argument("--skip-rl", action="store_true")
    parser.add_argument("--rl-steps", type=int, default=300)
    parser.add_argument("--logs", type=Path, default=Path("outputs/benchmarks/ddp_scaling"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp_scaling.json"))
    args = parser.parse_args()
    if min(args.gpus) < 1:
        parser.error("--gpus takes counts >= 1")
    if not args.skip_rl and (args.rl_datasets is None or not args.rl_datasets.is_dir()):
        parser.error("--rl-datasets must name a folder of Minari datasets (or pass --skip-rl)")
    args.logs.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in VISION_MODELS:
        rates = {}
        for gpus in args.gpus:
            log = args.logs / f"vision_{model}_{gpus}.log"
            torchrun(gpus, ["-m", "experiments.vision", "mode=throughput", f"model={model}", "throughput.steps=30"],
                     log, timeout=300)
            rates[gpus] = vision_images_per_second(log)
        rows += scaling_rows(model, "train", "img/s", rates)
    if not args.skip_rl:
        rates, batch = {}, 128
        for gpus in args.gpus:
            out_dir = args.logs / f"rl_{gpus}"
            torchrun(gpus, ["-m", "experiments.rl", "stage=train", "tasks=[cartpole,pendulum,acrobot]",
                            f"datasets_dir={args.rl_datasets}", f"out_dir={out_dir}", "scale=gpu",
                            f"train.steps={args.rl_steps}", f"train.batch_size={batch}", "train.log_every=100",
                            f"train.checkpoint_every={args.rl_steps}", "backbones=[lram]"],
                     args.logs / f"rl_{gpus}.log", timeout=600)
            rates[gpus] = rl_sequences_per_second(out_dir / "lram" / "metrics.csv", gpus, batch)
        rows += scaling_rows("lram", "train", "sequences/s", rates)
    print_table(rows)
    print("wrote", write_results(args.out, rows, gpu_counts=args.gpus))


if __name__ == "__main__":
    main()
