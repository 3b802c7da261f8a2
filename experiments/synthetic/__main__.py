"""`python -m experiments.synthetic [scale=gpu] [run=[formal]] [key=value ...]`: formal languages and MQAR."""
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.synthetic import formal, mqar

log = logging.getLogger(__name__)
EXPERIMENTS = {"formal": (formal.FormalConfig, formal.run_formal, formal.write_report),
               "mqar": (mqar.MQARConfig, mqar.run_mqar, mqar.write_report)}


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    unknown = set(cfg.run) - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"run may list {sorted(EXPERIMENTS)}, got unknown {sorted(unknown)}")
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output_dir)
    for name in cfg.run:
        config_type, run, write_report = EXPERIMENTS[name]
        experiment = config_type(**OmegaConf.to_container(cfg[name], resolve=True))
        runs = run(experiment, out / f"{name}_cache.jsonl", cfg.progress, train_missing=not cfg.report_only)
        log.info("%s:\n%s", name, write_report(runs, experiment, out))
    log.info("wrote %s", out.resolve())


if __name__ == "__main__":
    main()
