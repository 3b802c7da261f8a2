"""Training loop: schedule, learning on a real (tiny) image folder, exact resume, metrics files, complexity counts."""
import math
import os
from pathlib import Path

import pytest
import timm
import torch

from vision.complexity import count_flops, count_params, default_img_size, describe
from vision.data import DataConfig
from vision.metrics import read_csv
from vision.train import TrainConfig, lr_at, train

MODEL_KWARGS = dict(patch_size=4, embed_dim=16, depth=2, chunk_size=16)


def tiny_config(root, out_dir, **overrides):
    data = DataConfig(root=root, input_size=16, batch_size=8, num_workers=0, scale=(0.6, 1.0), hflip=0.0,
                      color_jitter=0.0, auto_augment=None, crop_pct=1.0, mixup=0.0, cutmix=0.0)
    base = dict(model="vil_tiny_patch16_224", model_kwargs=MODEL_KWARGS, data=data, epochs=2, warmup_epochs=0.5,
                lr=0.05, device="cpu", out_dir=str(out_dir), progress=False)
    return TrainConfig(**{**base, **overrides})


def test_lr_schedule_warmup_then_cosine():
    values = [lr_at(s, 100, 10, 1.0, 0.0, 0.1) for s in range(101)]
    assert values[0] == 0.0 and math.isclose(values[5], 0.5) and math.isclose(values[10], 1.0)
    assert math.isclose(values[55], 0.55) and math.isclose(values[100], 0.1)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_training_learns_and_writes_metrics(stripes_root, tmp_path):
    result = train(tiny_config(stripes_root, tmp_path, epochs=3, ema_decay=0.9))
    history = result["history"]
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["top1"] >= 66.0  # 3 classes, chance 33%
    assert {"top1", "top5", "ema_top1", "val_loss", "train_img_per_s"} <= set(history[0])
    rows = read_csv(os.path.join(tmp_path, "metrics.csv"))
    assert [r["epoch"] for r in rows] == [1, 2, 3] and math.isclose(rows[-1]["top1"], history[-1]["top1"])
    assert os.path.getsize(os.path.join(tmp_path, "curves.png")) > 1000


def test_resume_is_exact(stripes_root, tmp_path):
    straight = train(tiny_config(stripes_root, tmp_path / "a", ema_decay=0.9))
    train(tiny_config(stripes_root, tmp_path / "b", ema_decay=0.9, stop_epoch=1))  # stops after epoch 1 ...
    resumed = train(tiny_config(stripes_root, tmp_path / "b", ema_decay=0.9))  # ... and continues to epoch 2
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=False)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert straight["history"][-1]["train_loss"] == resumed["history"][-1]["train_loss"]
    with pytest.raises(ValueError, match="different run"):
        train(tiny_config(stripes_root, tmp_path / "b", seed=1, epochs=3, ema_decay=0.9))


def test_train_config_validation(stripes_root, tmp_path):
    with pytest.raises(ValueError, match="even batch"):
        TrainConfig(data=DataConfig(root=stripes_root, batch_size=3, mixup=0.8))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="compile_mode must be None or one of"):
        TrainConfig(compile_mode="reduce_overhead")


def test_compile_mode_reaches_torch_compile(stripes_root, tmp_path, monkeypatch):
    """train.compile_mode is the mode torch.compile gets (the module itself is run eagerly here)."""
    modes = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: modes.append(mode) or module)
    train(tiny_config(stripes_root, tmp_path, epochs=1, compile=True, compile_mode="reduce-overhead"))
    assert modes == ["reduce-overhead"]


@pytest.mark.parametrize("scale", ["tiny", "gpu", "imagenet"], ids=lambda scale: f"scale_{scale}")  # not the `gpu` mark
def test_hydra_train_config_takes_compile_mode_and_stop_epoch(scale, stripes_root):
    from hydra import compose, initialize_config_dir

    from experiments.vision.__main__ import _train_config

    conf = Path(__file__).parents[2] / "experiments" / "vision" / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("config", overrides=[f"scale={scale}", f"data.root={stripes_root}",
                                           "train.compile_mode=reduce-overhead", "train.stop_epoch=2"])
    train_cfg = _train_config(cfg)
    assert train_cfg.compile_mode == "reduce-overhead" and train_cfg.stop_epoch == 2


def test_param_and_flop_counts():
    layer = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 2, stride=2), torch.nn.Flatten(), torch.nn.Linear(256, 10))
    assert count_params(layer) == 3 * 4 * 4 + 4 + 256 * 10 + 10
    # conv: 4 out channels x 8x8 positions x 12 MACs; linear: 2560 MACs; 2 FLOPs per MAC
    assert count_flops(layer, 16) == 2 * (4 * 64 * 12 + 2560)


def test_counts_default_to_the_models_own_resolution():
    assert default_img_size("vil_tiny_patch16_224") == default_img_size("deit_tiny_patch16_224") == 224
    small = dict(depth=2, embed_dim=64)
    assert describe("vil_tiny_patch16_224", **small)["img_size"] == 224
    assert describe("vil_tiny_patch16_224", img_size=32, **small)["img_size"] == 32
    with pytest.raises(ValueError, match="default input size"):
        default_img_size("no_such_model_xyz")


def test_flop_count_includes_attention():
    """A self-attention layer's two S x S products are counted (the fused CPU SDPA kernel has no counter formula)."""
    attn = timm.layers.Attention(dim=32, num_heads=4)  # qkv and proj linears + attention over S tokens

    class Tokens(torch.nn.Module):  # count_flops feeds images: make (1, S = 16, 32) tokens of a 4x4 image
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x.flatten(2).transpose(1, 2).repeat(1, 1, 32 // x.shape[1]))

    S, D = 16, 32
    linear = 2 * S * (D * 3 * D + D * D)
    assert count_flops(Tokens(), 4, in_chans=2) == linear + 2 * 2 * S * S * D
