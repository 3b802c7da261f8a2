"""Load the published xLSTM-7B checkpoint layout (config.json + safetensors shards) from a local directory.

The published weights name modules `backbone.embeddings`, `backbone.blocks.<i>.{norm_mlstm, mlstm_layer, norm_ffn,
ffn}`, `backbone.out_norm` and `lm_head`, with q/k/v either as separate linears (`q`/`query`, ...; weight_mode
"single") or fused (`qkv_opreact`, `ifgate_preact`; weight_mode "fused"), and the FFN as `proj_up_gate` + `proj_up`
or fused `proj_up_gate_z`. Tensors are streamed shard by shard, so a 7B model never needs two copies in memory.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from xlstm_core.config import XLSTM7B_STYLE, xLSTMBlockStackConfig, xLSTMLMConfig
from xlstm_core.lm import xLSTMLM

ALIASES = {"q": ("q", "query"), "k": ("k", "key"), "v": ("v", "value")}


def config_from_published(data: dict) -> xLSTMLMConfig:
    """Translate a published config.json into our config (xLSTM-7B architecture, sizes from the file)."""
    try:
        stack = {**XLSTM7B_STYLE, "embedding_dim": data["embedding_dim"], "num_heads": data["num_heads"],
                 "num_blocks": data["num_blocks"]}
    except KeyError as missing:
        raise ValueError(f"published config.json lacks {missing}") from None
    optional = {"qk_dim_factor": "qk_dim_factor", "v_dim_factor": "v_dim_factor", "gate_soft_cap": "gate_soft_cap",
                "ffn_proj_factor": "ffn_proj_factor", "ffn_multiple_of": "ffn_round_up_to_multiple_of",
                "norm_eps": "norm_eps", "bias": "use_bias", "chunk_size": "chunk_size"}
    stack.update({ours: data[theirs] for ours, theirs in optional.items() if theirs in data})
    return xLSTMLMConfig(vocab_size=data["vocab_size"], stack=xLSTMBlockStackConfig(**stack),
                         logit_soft_cap=data.get("output_logit_soft_cap", 30.0),
                         tie_embeddings=data.get("tie_word_embeddings", False))


def _open_tensors(directory: Path) -> dict[str, Path]:
    """Map every tensor name to the shard file that holds it."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: directory / shard for name, shard in weight_map.items()}
    shards = sorted(directory.glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    names = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as f:
            names.update({name: shard for name in f.keys()})
    return names


Part = tuple[str, ...]  # alternative names of one published tensor


def _parts(*names: str) -> Part:
    return tuple(names)


def _target_tensors(model: xLSTMLM, data: dict) -> dict[str, list[Part]]:
    """For each of our parameters, the published tensors (first present alternative) it concatenates along rows."""
    fused = data.get("weight_mode", "single") == "fused"
    mapping = {"embedding.weight": [_parts("backbone.embeddings.weight")],
               "backbone.final_norm.weight": [_parts("backbone.out_norm.weight")]}
    if not model.cfg.tie_embeddings:
        mapping["head.weight"] = [_parts("lm_head.weight")]
    for i in range(len(model.backbone.blocks)):
        src, ours = f"backbone.blocks.{i}", f"backbone.blocks.{i}"
        layer = f"{src}.mlstm_layer"
        mapping[f"{ours}.norm_mixer.weight"] = [_parts(f"{src}.norm_mlstm.weight")]
        mapping[f"{ours}.norm_ffn.weight"] = [_parts(f"{src}.norm_ffn.weight")]
        mapping[f"{ours}.layer.norm.weight"] = [_parts(f"{layer}.multihead_norm.weight")]
        mapping[f"{ours}.layer.out.weight"] = [_parts(f"{layer}.out_proj.weight")]
        mapping[f"{ours}.ffn.down.weight"] = [_parts(f"{src}.ffn.proj_down.weight")]
        if fused:
            mapping[f"{ours}.layer.qkvo.weight"] = [_parts(f"{layer}.qkv_opreact.weight")]
            for part in ("weight", "bias"):
                mapping[f"{ours}.layer.gates.{part}"] = [_parts(f"{layer}.ifgate_preact.{part}")]
            mapping[f"{ours}.ffn.up.weight"] = [_parts(f"{src}.ffn.proj_up_gate_z.weight")]
        else:
            mapping[f"{ours}.layer.qkvo.weight"] = [
                *(_parts(*(f"{layer}.{alias}.weight" for alias in ALIASES[name])) for name in ("q", "k", "v")),
                _parts(f"{layer}.ogate_preact.weight")]
            for part in ("weight", "bias"):
                mapping[f"{ours}.layer.gates.{part}"] = [_parts(f"{layer}.igate_preact.{part}"),
                                                         _parts(f"{layer}.fgate_preact.{part}")]
            mapping[f"{ours}.ffn.up.weight"] = [_parts(f"{src}.ffn.proj_up_gate.weight"),
                                                _parts(f"{src}.ffn.proj_up.weight")]
    return mapping


def load_published_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                              dtype: torch.dtype = torch.float32) -> xLSTMLM:
    """Build our xLSTMLM from a published xLSTM-7B-layout directory (weights on `device` in `dtype`)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found")
    data = json.loads(config_path.read_text())
    if data.get("use_bias", False):
        raise ValueError("checkpoints with use_bias=true are not supported: the published 7B model has no biases")
    with torch.device("meta"):
        model = xLSTMLM(config_from_published(data))
    sources = _open_tensors(directory)
    params = dict(model.named_parameters())
    mapping = _target_tensors(model, data)
    unmapped = set(params) - set(mapping)
    if unmapped:
        raise ValueError(f"no published tensor mapped to {sorted(unmapped)}")
    loaded = {}
    for name, parts in mapping.items():
        pieces = []
        for alternatives in parts:
            source = next((a for a in alternatives if a in sources), None)
            if source is None:
                raise ValueError(f"checkpoint lacks {' / '.join(alternatives)} (for our {name})")
            with safe_open(str(sources[source]), framework="pt", device="cpu") as f:
                pieces.append(f.get_tensor(source))
        tensor = torch.cat(pieces, 0)
        if tensor.shape != params[name].shape:
            raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(params[name].shape)}")
        loaded[name] = tensor.to(device=device, dtype=dtype)
    model.load_state_dict(loaded, strict=True, assign=True)
    if model.cfg.tie_embeddings:
        model.head.weight = model.embedding.weight
    return model.eval()
