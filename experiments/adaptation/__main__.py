"""`python -m experiments.adaptation [scale=gpu] [key=value ...]`: candidates -> weights -> selectors -> table."""
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from adaptation.pipeline import experiment_config, run_experiment
from adaptation.report import to_markdown, win_counts, write_report

log = logging.getLogger(__name__)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    raw = OmegaConf.to_container(cfg.experiment, resolve=True)
    results = run_experiment(experiment_config(raw))
    table = write_report(results, cfg.output_dir)
    log.info("target accuracy (%%), mean ± std over seeds:\n%s", to_markdown(table))
    log.info("IWA vs each selector over all runs:\n%s", win_counts(results).to_string(index=False))
    log.info("wrote %s", Path(cfg.output_dir).resolve())


if __name__ == "__main__":
    main()
