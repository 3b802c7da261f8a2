"""`python -m experiments.rl [data=tiny|classic|all] [scale=cpu|gpu] [stage=data|train|eval|all] [key=value ...]`.

Thin Hydra wrapper around `rl.pipeline.run`; everything lands under ``out_dir`` (default ``outputs/rl/...``).
"""
from __future__ import annotations

import json

import hydra
from omegaconf import DictConfig, OmegaConf

from rl.pipeline import run


@hydra.main(config_path="conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    results = run(OmegaConf.to_container(cfg, resolve=True))
    summary = {k: v for k, v in results.items() if k.startswith("params_")}
    if summary:
        print(json.dumps(summary))
    for key in ("datasets", "eval", "extrapolation"):
        for row in results.get(key, []):
            print(key, json.dumps(row))


if __name__ == "__main__":
    main()
