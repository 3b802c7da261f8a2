"""`python -m experiments.lm [scale=gpu] [key=value ...]`: mLSTMexp vs mLSTMsig vs Llama on local source text."""
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from experiments.lm.run import LMConfig, run_lm, write_report

log = logging.getLogger(__name__)


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.threads)
    experiment = LMConfig(**OmegaConf.to_container(cfg.experiment, resolve=True))
    out = Path(cfg.output_dir)
    runs = run_lm(experiment, out / "lm_cache.jsonl", cfg.progress, train_missing=not cfg.report_only)
    log.info("language modelling:\n%s", write_report(runs, experiment, out))
    log.info("wrote %s", out.resolve())


if __name__ == "__main__":
    main()
