"""Baselines (Llama-style Transformer, LSTM), parameter matching and the experiment model zoo."""
import math

import pytest
import torch
import torch.nn.functional as F

from xlstm_core.baselines import (
    LSTMLM,
    LSTMConfig,
    TransformerConfig,
    TransformerLM,
    count_parameters,
    match_parameters,
    rotary,
)
from xlstm_core.tasks import ModelSpec, build_model, parse_ratio, slstm_positions


def tiny_transformer(**kw) -> TransformerLM:
    torch.manual_seed(0)
    return TransformerLM(TransformerConfig(vocab_size=17, embedding_dim=32, num_layers=2, num_heads=4, **kw))


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8), torch.randn(1, 1, 1, 8).expand(1, 1, 12, 8)
    scores = rotary(q, 10000.0)[0, 0] @ rotary(k, 10000.0)[0, 0].T  # (12, 12): same q/k content everywhere
    for offset in range(-5, 6):
        diagonal = torch.diagonal(scores, offset)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
    assert torch.allclose(rotary(q, 10000.0)[..., 0, :], q[..., 0, :])  # position 0 is not rotated
    assert torch.allclose(rotary(q, 10000.0).norm(dim=-1), q.norm(dim=-1), atol=1e-5)


def test_attention_matches_explicit_masked_softmax():
    model = tiny_transformer().eval()
    attn = model.blocks[0].attn
    x = torch.randn(2, 9, 32)
    q, k, v = attn.qkv(x).view(2, 9, 3, 4, 8).permute(2, 0, 3, 1, 4)
    q, k = rotary(q, 10000.0), rotary(k, 10000.0)
    mask = torch.ones(9, 9).tril().bool()
    weights = (q @ k.transpose(-1, -2) / math.sqrt(8)).masked_fill(~mask, float("-inf")).softmax(-1)
    expected = attn.out((weights @ v).transpose(1, 2).reshape(2, 9, 32))
    assert torch.allclose(attn(x), expected, atol=1e-5)


@pytest.mark.parametrize("make", [tiny_transformer, lambda: LSTMLM(LSTMConfig(17, 16, 24, 2))])
def test_baselines_are_causal_lms(make):
    model = make().eval()
    tokens = torch.randint(0, 17, (2, 10))
    logits = model(tokens)
    assert logits.shape == (2, 10, 17) and logits.dtype == torch.float32
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 17
    after = model(changed)
    assert torch.allclose(logits[:, :6], after[:, :6], atol=1e-6) and not torch.allclose(logits[:, 6:], after[:, 6:])
    with pytest.raises(ValueError, match="tokens"):
        model(tokens.float())


def test_transformer_learns_to_copy_the_previous_token():
    model = tiny_transformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):
        tokens = torch.randint(0, 17, (16, 12), generator=generator)
        loss = F.cross_entropy(model(tokens)[:, 1:].reshape(-1, 17), tokens[:, :-1].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.5 * math.log(17)


def test_config_validation():
    assert TransformerConfig(embedding_dim=96).ffn_dim == 256
    with pytest.raises(ValueError, match="even size"):
        TransformerConfig(embedding_dim=36, num_heads=4)
    with pytest.raises(ValueError, match="positive"):
        LSTMConfig(hidden_dim=0)


def test_match_parameters_picks_the_closest_size():
    def make(ffn):
        return TransformerLM(TransformerConfig(17, 32, 2, 4, ffn))

    counts = {f: count_parameters(make(f)) for f in (8, 16, 24, 32)}
    choice, model = match_parameters(make, counts[24] + 10, [8, 16, 24, 32])
    assert choice == 24 and count_parameters(model) == counts[24]
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError):
        match_parameters(make, 100, [])


@pytest.mark.parametrize("arch", ["transformer", "lstm"])
def test_baselines_are_matched_to_the_mlstm_reference(arch):
    reference = count_parameters(build_model("xlstm[1:0]", 20, 32, 2, 4))
    assert abs(count_parameters(build_model(arch, 20, 32, 2, 4)) - reference) / reference < 0.03


def test_xlstm_ratios_follow_the_paper_notation():
    assert parse_ratio("xLSTM[7:1]") == (7, 1)
    assert slstm_positions(2, 1, 0) == [] and slstm_positions(2, 0, 1) == [0, 1] and slstm_positions(2, 1, 1) == [1]
    assert slstm_positions(8, 7, 1) == [7] and slstm_positions(6, 1, 2) == [1, 2, 4, 5]
    model = build_model("xlstm[1:1]", 20, 32, 2, 4, stack={"mlstm_variant": "sig"})
    assert model.cfg.stack.slstm_at == [1] and model.cfg.stack.mlstm_variant == "sig"
    assert model(torch.randint(0, 20, (2, 5))).shape == (2, 5, 20)
    for bad in ("xlstm[0:0]", "mamba", "xlstm[1-1]"):
        with pytest.raises(ValueError, match="architecture"):
            parse_ratio(bad)


def test_model_spec_parsing():
    assert ModelSpec.parse("xlstm[0:1]").name == "xLSTM[0:1]" and ModelSpec.parse("transformer").name == "Llama"
    spec = ModelSpec.parse({"arch": "xLSTM[1:0]", "name": "mLSTMsig", "stack": {"mlstm_variant": "sig"}})
    assert spec.arch == "xlstm[1:0]" and spec.name == "mLSTMsig"
    with pytest.raises(ValueError):
        ModelSpec.parse("gru")
