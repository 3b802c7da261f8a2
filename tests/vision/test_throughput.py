"""Synthetic-batch training throughput (the DDP scaling measurement), single process on CPU."""
import pytest

from vision.throughput import training_throughput


def test_training_throughput_reports_images_per_second():
    result = training_throughput("vil_tiny_patch16_224", dict(patch_size=4, embed_dim=16, depth=2, chunk_size=16),
                                 img_size=16, batch_size=2, steps=2, warmup=1, device="cpu")
    assert result["world"] == 1 and result["img_per_s_total"] == result["img_per_s_per_process"] > 0
    assert result["seconds_per_step"] == pytest.approx(2 / result["img_per_s_total"])


def test_training_throughput_rejects_empty_runs():
    with pytest.raises(ValueError, match="steps >= 1"):
        training_throughput("vil_tiny_patch16_224", steps=0)
