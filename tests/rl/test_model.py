"""Tokenisation and masking across mixed action spaces; recurrent inference equals the parallel forward."""
import numpy as np
import pytest
import torch

from rl.data.loader import MultiTaskSampler
from rl.model import ActionModel, ActionModelConfig, matched_dt_layers, slstm_positions
from rl.tokens import ActionCodec

SMALL = {"embedding_dim": 32, "num_blocks": 2, "num_heads": 2,
         "max_obs_dim": 40, "max_action_dims": 4, "dropout": 0.0, "chunk_size": 8}


def test_codec_roundtrip_and_masks():
    codec = ActionCodec(0, [-1.0, 0.0], [1.0, 10.0])
    actions = np.random.default_rng(0).uniform([-1, 0], [1, 10], size=(100, 2))
    back = codec.decode(codec.encode(actions))
    assert np.all(np.abs(back - actions) <= np.array([2 / 256, 10 / 256]) / 2 + 1e-6)
    assert codec.encode(np.array([[5.0, -3.0]])).tolist() == [[255, 0]]  # clipped to the range
    discrete = ActionCodec(6)
    assert discrete.decode(discrete.encode(np.array([0, 5, 3]))).tolist() == [0, 5, 3]
    mask = discrete.output_mask(4)
    assert mask.sum() == 6 and mask[0, :6].all() and not mask[1:].any()
    with pytest.raises(ValueError):
        ActionCodec(300)


def test_slstm_positions():
    assert slstm_positions(4, 0.0) == [] and slstm_positions(4, 0.25) == [3]
    assert slstm_positions(8, 0.5) == [1, 3, 5, 7] and slstm_positions(3, 1.0) == [0, 1, 2]


def test_head_masks_invalid_bins_and_loss_ignores_unused_rows(tasks):
    torch.manual_seed(0)
    model = ActionModel(ActionModelConfig(**SMALL)).eval()
    batch = MultiTaskSampler(tasks, 8, 40, 4, seed=1).sample(6)
    logits = model(batch)
    assert logits.shape == (6, 8, 4, 256)
    assert torch.isneginf(logits[~batch["action_mask"][:, None].expand_as(logits)]).all()
    assert torch.isfinite(logits[batch["action_mask"][:, None].expand_as(logits)]).all()
    loss, _ = model.loss(batch)
    unused = ~batch["action_mask"].any(-1)[:, None, :].expand_as(batch["actions"])
    changed = dict(batch, actions=batch["actions"].masked_fill(unused, 7))
    assert torch.allclose(model.loss(changed)[0], loss)


def _step_all(model, batch, window):
    state = model.init_state(batch["obs"].shape[0], window)
    outs = []
    for t in range(batch["obs"].shape[1]):
        inputs = {k: (v[:, t:t + 1] if k in ("obs", "frames", "prev_actions", "first", "prev_rewards", "rtg") else v)
                  for k, v in batch.items()}
        logits, state = model.step(inputs, state)
        outs.append(logits)
    return torch.stack(outs, 1)


@pytest.mark.parametrize("backbone,share", [("lram", 0.5), ("lram", 0.0), ("dt", 0.0)])
def test_recurrent_step_equals_parallel_forward(tasks, backbone, share):
    torch.manual_seed(0)
    model = ActionModel(ActionModelConfig(backbone=backbone, slstm_share=share, **SMALL)).eval()
    batch = MultiTaskSampler(tasks, 12, 40, 4, seed=2).sample(3)
    with torch.no_grad():
        parallel, recurrent = model(batch), _step_all(model, batch, window=32)
    finite = torch.isfinite(parallel)
    assert torch.equal(finite, torch.isfinite(recurrent))
    torch.testing.assert_close(recurrent[finite], parallel[finite], atol=2e-4, rtol=1e-4)


def test_image_tokens_and_dt_ring_buffer():
    torch.manual_seed(0)
    model = ActionModel(ActionModelConfig(backbone="dt", **SMALL)).eval()
    b, t = 2, 6
    batch = {"obs": torch.zeros(b, t, 40), "frames": torch.randint(0, 255, (b, t, 64, 64), dtype=torch.uint8),
             "is_image": torch.tensor([True, False]), "prev_actions": torch.randint(0, 6, (b, t, 4)),
             "first": torch.zeros(b, t, dtype=torch.bool), "prev_rewards": torch.randn(b, t), "rtg": torch.randn(b, t),
             "action_mask": ActionCodec(6).output_mask(4).expand(b, -1, -1)}
    with torch.no_grad():
        parallel = model(batch)
        other = model(dict(batch, frames=torch.zeros_like(batch["frames"])))
        assert not torch.allclose(parallel[0], other[0]) and torch.allclose(parallel[1], other[1])
        full = _step_all(model, batch, window=t)
        windowed = _step_all(model, batch, window=3)  # sliding window: the ring buffer wraps around
    torch.testing.assert_close(full, parallel, atol=2e-4, rtol=1e-4)
    finite = torch.isfinite(windowed)
    assert torch.allclose(windowed[:, :3][finite[:, :3]], parallel[:, :3][finite[:, :3]], atol=2e-4)
    assert not torch.allclose(windowed[:, -1][finite[:, -1]], parallel[:, -1][finite[:, -1]], atol=1e-3)


def test_dt_matches_lram_parameter_count():
    cfg = ActionModelConfig(embedding_dim=64, num_blocks=4, num_heads=4, slstm_share=0.25)
    lram = sum(p.numel() for p in ActionModel(cfg).backbone.parameters())
    dt_cfg = ActionModelConfig(**{**cfg.to_dict(), "backbone": "dt"})
    dt = sum(p.numel() for p in ActionModel(dt_cfg).backbone.parameters())
    per_layer = dt / matched_dt_layers(cfg)
    assert abs(dt - lram) <= per_layer / 2 + 1
