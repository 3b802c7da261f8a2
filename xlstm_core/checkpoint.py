"""Save and load a language model with its config: `config.json` + `model.safetensors` in one directory."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model as load_weights_into
from safetensors.torch import save_model

from xlstm_core.config import xLSTMLMConfig
from xlstm_core.lm import xLSTMLM

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def save_pretrained(model: xLSTMLM, directory: str | Path) -> Path:
    """Write the model's config and weights; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps({"model_type": "xlstm_lm", **model.cfg.to_dict()}, indent=2))
    save_model(model, str(directory / WEIGHTS_FILE))
    return directory


def load_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> xLSTMLM:
    """Rebuild the model from `config.json` and load `model.safetensors` (strict: every key must match)."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{directory} must contain {CONFIG_FILE} and {WEIGHTS_FILE}")
    data = json.loads(config_path.read_text())
    if data.pop("model_type", None) != "xlstm_lm":
        raise ValueError(f"{config_path} is not an xlstm_lm config")
    model = xLSTMLM(xLSTMLMConfig.from_dict(data))
    load_weights_into(model, str(weights_path), device=str(device))
    return model.to(device)


def load_model(directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load either layout: ours (`save_pretrained`) or the published xLSTM-7B one, told apart by config.json."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    if json.loads(config_path.read_text()).get("model_type") == "xlstm_lm":
        return load_pretrained(directory, device).to(dtype)
    from xlstm_core.published import load_published_checkpoint

    return load_published_checkpoint(directory, device, dtype)
