"""Loading the published xLSTM-7B checkpoint layout (written here at tiny size) and local tokenizers."""
import json

import pytest
import torch
from safetensors.torch import save_file

from xlstm_core import xLSTMLM, xLSTMLMConfig
from xlstm_core.published import load_published_checkpoint
from xlstm_core.tokenizer import ByteTokenizer, LocalTokenizer


def tiny_model():
    torch.manual_seed(0)
    model = xLSTMLM(xLSTMLMConfig.preset("tiny", stack={"embedding_dim": 32, "num_heads": 2, "num_blocks": 2,
                                                        "chunk_size": 4}))
    with torch.no_grad():  # move every parameter off its initial value so a missed tensor shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def published_tensors(model: xLSTMLM, fused: bool, query_names: bool) -> dict[str, torch.Tensor]:
    """Write our weights under the published names, written out by hand from the published layout."""
    out = {"backbone.embeddings.weight": model.embedding.weight, "backbone.out_norm.weight":
           model.backbone.final_norm.weight, "lm_head.weight": model.head.weight}
    for i, block in enumerate(model.backbone.blocks):
        p, layer = f"backbone.blocks.{i}", block.layer
        out[f"{p}.norm_mlstm.weight"] = block.norm_mixer.weight
        out[f"{p}.norm_ffn.weight"] = block.norm_ffn.weight
        out[f"{p}.mlstm_layer.multihead_norm.weight"] = layer.norm.weight
        out[f"{p}.mlstm_layer.out_proj.weight"] = layer.out.weight
        out[f"{p}.ffn.proj_down.weight"] = block.ffn.down.weight
        if fused:
            out[f"{p}.mlstm_layer.qkv_opreact.weight"] = layer.qkvo.weight
            out[f"{p}.mlstm_layer.ifgate_preact.weight"] = layer.gates.weight
            out[f"{p}.mlstm_layer.ifgate_preact.bias"] = layer.gates.bias
            out[f"{p}.ffn.proj_up_gate_z.weight"] = block.ffn.up.weight
        else:
            q, k, v, o = layer.qkvo.weight.split(layer.split_sizes)
            names = ("query", "key", "value") if query_names else ("q", "k", "v")
            for theirs, tensor in zip(names, (q, k, v)):
                out[f"{p}.mlstm_layer.{theirs}.weight"] = tensor
            out[f"{p}.mlstm_layer.ogate_preact.weight"] = o
            for part in ("weight", "bias"):
                igate, fgate = getattr(layer.gates, part).chunk(2)
                out[f"{p}.mlstm_layer.igate_preact.{part}"] = igate
                out[f"{p}.mlstm_layer.fgate_preact.{part}"] = fgate
            gate_rows, up_rows = block.ffn.up.weight.chunk(2, 0)
            out[f"{p}.ffn.proj_up_gate.weight"] = gate_rows
            out[f"{p}.ffn.proj_up.weight"] = up_rows
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def write_checkpoint(directory, model, fused, query_names):
    tensors = published_tensors(model, fused, query_names)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(directory / shard))
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    stack = model.cfg.stack
    config = {"embedding_dim": stack.embedding_dim, "num_heads": stack.num_heads, "num_blocks": stack.num_blocks,
              "vocab_size": model.cfg.vocab_size, "qk_dim_factor": 0.5, "v_dim_factor": 1.0, "gate_soft_cap": 15.0,
              "output_logit_soft_cap": 30.0, "ffn_proj_factor": stack.ffn_proj_factor,
              "ffn_round_up_to_multiple_of": stack.ffn_multiple_of, "norm_eps": 1e-6, "use_bias": False,
              "weight_mode": "fused" if fused else "single", "chunk_size": 4}
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("fused, query_names", [(False, False), (False, True), (True, False)])
def test_published_layout_round_trip(tmp_path, fused, query_names):
    model = tiny_model()
    write_checkpoint(tmp_path, model, fused, query_names)
    loaded = load_published_checkpoint(tmp_path)
    tokens = torch.randint(0, 256, (2, 9))
    assert torch.allclose(loaded(tokens), model(tokens), atol=1e-5)


def test_published_loader_reports_missing_tensors(tmp_path):
    model = tiny_model()
    write_checkpoint(tmp_path, model, fused=False, query_names=False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    del index["weight_map"]["backbone.blocks.1.ffn.proj_up.weight"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="proj_up.weight"):
        load_published_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_published_checkpoint(tmp_path / "nowhere")


def test_local_tokenizer_from_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the xlstm remembers the past"] * 50,
                            trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<eos>"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    local = LocalTokenizer(tmp_path)
    ids = local.encode("the xlstm remembers")
    assert ids.dtype == torch.long and local.decode(ids).replace(" ", "") == "thexlstmremembers"
    assert local.token_id("<eos>") == 1
    with pytest.raises(FileNotFoundError):
        LocalTokenizer(tmp_path / "missing.json")
    assert ByteTokenizer().decode(ByteTokenizer().encode("héllo")) == "héllo"
