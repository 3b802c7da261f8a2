"""`python -m experiments.fewshot benchmark=sinusoid|rlc|hydrology [scale=full] [benchmark.key=value ...]`:
tasks → θ0 → updates → subspace → baselines → validation grid search → test table and plot."""
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from fewshot.benchmark import BenchmarkConfig, run_benchmark
from fewshot.metrics import Metric
from fewshot.report import markdown_table, write_report

log = logging.getLogger(__name__)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    bench = BenchmarkConfig(**OmegaConf.to_container(cfg.benchmark, resolve=True))
    per_task = run_benchmark(bench)
    metric = Metric(**bench.metric)
    summary = write_report(per_task, metric, bench.out_dir, f"{bench.name}: few-shot adaptation")
    log.info("\n%s", markdown_table(summary, metric))
    log.info("wrote %s", Path(bench.out_dir).resolve())


if __name__ == "__main__":
    main()
