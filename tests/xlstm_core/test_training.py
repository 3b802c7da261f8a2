"""Byte corpus, unigram baseline, resumable training loop, and the quickstart entry point end to end."""
import subprocess
import sys

import pytest
import torch

from xlstm_core import xLSTMLM, xLSTMLMConfig
from xlstm_core.text import ByteCorpus
from xlstm_core.training import TrainConfig, lr_factor, train_lm


def tiny_model():
    torch.manual_seed(0)
    return xLSTMLM(xLSTMLMConfig.preset("tiny", stack={"embedding_dim": 32, "num_blocks": 2, "slstm_at": [1],
                                                       "chunk_size": 8}))


def test_corpus_batches_and_unigram_baseline():
    corpus = ByteCorpus(b"abab" * 50_000, val_fraction=0.2)
    x, y = corpus.batch("train", 4, 10, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 10) and torch.equal(x[:, 1:], y[:, :-1])
    # two equally frequent symbols: the unigram loss is about log 2
    assert abs(corpus.unigram_loss() - torch.log(torch.tensor(2.0)).item()) < 0.01
    with pytest.raises(ValueError, match="too few"):
        corpus.batch("val", 1, 50_000)


def test_stdlib_corpus_is_deterministic():
    a, b = ByteCorpus.python_stdlib(20_000), ByteCorpus.python_stdlib(20_000)
    assert torch.equal(a.splits["train"], b.splits["train"]) and len(a.splits["val"]) == 2000


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(99, cfg) == pytest.approx(0.1, abs=0.01)


class InterruptingCorpus:
    """Delegates to a corpus and raises after `limit` training batches, like a killed job."""

    def __init__(self, corpus, limit):
        self.corpus, self.limit, self.calls = corpus, limit, 0

    def batch(self, split, *args):
        if split == "train":
            self.calls += 1
            if self.calls > self.limit:
                raise KeyboardInterrupt
        return self.corpus.batch(split, *args)


def test_training_lowers_loss_and_resumes_exactly(tmp_path):
    corpus = ByteCorpus(ByteCorpus.python_stdlib(60_000).splits["train"].numpy().tobytes())
    cfg = TrainConfig(steps=8, batch_size=4, seq_len=32, lr=5e-3, warmup_steps=2, eval_every=4, eval_batches=1)
    straight = tiny_model()
    history = train_lm(straight, corpus, cfg, tmp_path / "a")
    assert history[-1]["val_loss"] < history[0]["val_loss"] + 1e-6 and len(history) == 2

    resumed = tiny_model()
    with pytest.raises(KeyboardInterrupt):
        train_lm(resumed, InterruptingCorpus(corpus, limit=5), cfg, tmp_path / "b")
    resumed = tiny_model()
    history_b = train_lm(resumed, corpus, cfg, tmp_path / "b")
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert history_b == history
    with pytest.raises(ValueError, match="another training config"):
        train_lm(tiny_model(), corpus, TrainConfig(steps=9), tmp_path / "b")


def test_quickstart_runs_end_to_end(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, "-m", "experiments.quickstart", f"out_dir={out}", "train.steps=4", "train.eval_every=2",
           "train.batch_size=4", "train.eval_batches=1", "corpus_bytes=50000", "model.stack.embedding_dim=32",
           "model.stack.num_blocks=2", "sample.max_new_tokens=8", "device=cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation loss" in result.stdout and "sample:" in result.stdout
    for name in ("loss_curve.png", "metrics.csv", "checkpoint/model.safetensors", "checkpoint/config.json"):
        assert (out / name).is_file(), name
