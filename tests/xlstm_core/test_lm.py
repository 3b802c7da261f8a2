"""Language model: 7B config on meta, prefill + steps == full forward, batched generation, checkpoints."""
import json

import pytest
import torch

from xlstm_core import generate, load_pretrained, sample_next, save_pretrained, stream, xLSTMLM, xLSTMLMConfig


def tiny_lm(**stack):
    torch.manual_seed(0)
    return xLSTMLM(xLSTMLMConfig.preset("tiny", stack={"slstm_at": [1], "chunk_size": 4, **stack})).eval()


def test_7b_config_builds_on_meta_with_about_6_9b_parameters():
    with torch.device("meta"):
        model = xLSTMLM(xLSTMLMConfig.preset("7b"))
    n = model.num_parameters()
    print(f"xLSTM-7B-style parameters: {n / 1e9:.3f}B")
    assert 6.8e9 < n < 7.0e9
    stack = model.cfg.stack
    assert stack.ffn_dim == 10944 and stack.gate_soft_cap == 15.0 and model.cfg.logit_soft_cap == 30.0
    layer = model.backbone.blocks[0].layer
    assert layer.qk_dim == 2048 and layer.v_dim == 4096
    assert layer.qkvo.weight.is_meta  # nothing was allocated
    assert layer.qkvo.weight.shape == (2 * 2048 + 2 * 4096, 4096)


def test_xlstm7b_style_initialisation():
    layer = tiny_lm().backbone.blocks[0].layer
    nh = layer.cfg.num_heads
    assert torch.all(layer.gates.bias[:nh] == -10.0)
    assert torch.allclose(layer.gates.bias[nh:], torch.linspace(3.0, 6.0, nh))
    assert torch.all(layer.gates.weight == 0) and torch.all(layer.qkvo.weight.split(layer.split_sizes)[3] == 0)


def test_logits_are_soft_capped():
    model = tiny_lm()
    with torch.no_grad():
        model.head.weight.mul_(1e4)
    logits = model(torch.randint(0, 256, (1, 5)))
    assert logits.abs().max() <= 30.0 and logits.abs().max() > 29.0


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_prefill_then_steps_equal_full_forward(variant):
    model = tiny_lm(mlstm_variant=variant)
    tokens = torch.randint(0, 256, (3, 12))
    full = model(tokens)
    logits, state = model.prefill(tokens[:, :7])
    assert torch.allclose(logits, full[:, 6], atol=1e-4)
    for t in range(7, 12):
        logits, state = model.step(tokens[:, t], state)
        assert torch.allclose(logits, full[:, t], atol=1e-4)


def test_segmented_prefill_equals_one_call():
    model = tiny_lm()
    tokens = torch.randint(0, 256, (2, 23))
    whole, whole_state = model.prefill(tokens)
    pieces, piece_state = model.prefill(tokens, max_tokens_per_call=10)  # segments of 5 tokens per row
    assert torch.allclose(pieces, whole, atol=1e-4)
    logits_a, _ = model.step(tokens[:, 0], whole_state)
    logits_b, _ = model.step(tokens[:, 0], piece_state)
    assert torch.allclose(logits_a, logits_b, atol=1e-4)


def test_greedy_generation_matches_argmax_of_full_forward():
    model = tiny_lm()
    prompt = torch.randint(0, 256, (2, 5))
    new = generate(model, prompt, 6, temperature=0)
    seq = torch.cat([prompt, new], 1)
    logits = model(seq)
    assert torch.equal(logits[:, 4:-1].argmax(-1), new)


def test_prompts_of_different_lengths_equal_separate_generation():
    model = tiny_lm()
    prompts = [torch.randint(0, 256, (n,)) for n in (3, 8)]
    batched = generate(model, prompts, 5, temperature=0)
    for row, prompt in enumerate(prompts):
        assert torch.equal(batched[row], generate(model, prompt, 5, temperature=0)[0])


def test_stop_condition_per_sequence_and_streaming():
    model = tiny_lm()
    prompt = torch.randint(0, 256, (2, 4))
    greedy = generate(model, prompt, 8, temperature=0)
    eos = int(greedy[0, 2])  # row 0 emits this token at step 2
    stopped = generate(model, prompt, 8, temperature=0, eos_token_id=eos)
    first_eos = (greedy[0] == eos).nonzero()[0].item()
    assert torch.all(stopped[0, first_eos:] == eos)
    tokens = list(stream(model, prompt, 8, temperature=0))
    assert torch.equal(torch.stack(tokens, 1), greedy)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) <= {2, 3}
    # top_p=0.6: token 3 has p=0.64 alone, so nucleus is {3}
    assert set(sample_next(logits, top_p=0.6, generator=g).tolist()) == {3}
    assert torch.equal(sample_next(logits, temperature=0), torch.full((200,), 3))
    with pytest.raises(ValueError, match="temperature"):
        sample_next(logits, temperature=-1)


def test_checkpoint_round_trip(tmp_path):
    model = tiny_lm()
    save_pretrained(model, tmp_path / "ckpt")
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["model_type"] == "xlstm_lm"
    loaded = load_pretrained(tmp_path / "ckpt").eval()
    tokens = torch.randint(0, 256, (2, 6))
    assert torch.equal(loaded(tokens), model(tokens))
    assert loaded.cfg == model.cfg
    with pytest.raises(FileNotFoundError):
        load_pretrained(tmp_path / "missing")


def test_bad_tokens_raise():
    with pytest.raises(ValueError, match="tokens must be an int tensor"):
        tiny_lm()(torch.randn(2, 3))
    with pytest.raises(ValueError, match="reversed blocks"):
        xLSTMLMConfig.preset("tiny", stack={"reverse_at": [0]})


def test_configs_compose_and_instantiate_with_hydra():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from xlstm_core import xLSTMBlockStackConfig

    node = OmegaConf.create({"_target_": "xlstm_core.xLSTMLMConfig", "vocab_size": 100,
                             "stack": {"embedding_dim": 32, "num_blocks": 3, "num_heads": 2, "slstm_at": [2]}})
    cfg = instantiate(node)
    assert cfg == xLSTMLMConfig(vocab_size=100, stack=xLSTMBlockStackConfig(embedding_dim=32, num_blocks=3,
                                                                            num_heads=2, slstm_at=[2]))
    assert xLSTMLMConfig.from_dict(cfg.to_dict()) == cfg
    assert isinstance(xLSTMLM(cfg).backbone.blocks[2].layer, torch.nn.Module)
