"""`python -m experiments.synthetic [scale=gpu] [run=[formal]] [key=value ...]`: formal languages and MQAR.

Several processes can share one GPU: start `shard=i/n` for i = 0..n-1 (they share the result caches), then once
with `report_only=true` for the tables and plots (experiments/synthetic/run_sharded.sh does both)."""
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.synthetic import formal, mqar
from experiments.synthetic.sweep import parse_shard

log = logging.getLogger(__name__)
EXPERIMENTS = {"formal": (formal.FormalConfig, formal.run_formal, formal.write_report),
               "mqar": (mqar.MQARConfig, mqar.run_mqar, mqar.write_report)}


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.run) - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"run may list {sorted(EXPERIMENTS)}, got unknown {sorted(unknown)}")
    shard = parse_shard(cfg.shard)
    if shard is not None and cfg.report_only:
        raise ValueError("report_only=true reports every cached run: leave shard unset")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    for name in cfg.run:
        config_type, run, write_report = EXPERIMENTS[name]
        experiment = config_type(**OmegaConf.to_container(cfg[name], resolve=True))
        runs = run(experiment, out / f"{name}_cache.jsonl", cfg.progress, train_missing=not cfg.report_only,
                   shard=shard)
        if shard is None:
            log.info("%s:\n%s", name, write_report(runs, experiment, out))
        else:
            log.info("%s: shard %s finished %d runs (tables: report_only=true once all shards are done)",
                     name, cfg.shard, len(runs))
    log.info("wrote %s", out.resolve())


if __name__ == "__main__":
    main()
