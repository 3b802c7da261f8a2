"""The synthetic and language-modelling experiments: short runs learn, reports are written, runs are cached,
and the Hydra configs (tiny and gpu) compose into valid experiment configs."""
import itertools
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.lm import run as lm
from experiments.synthetic import formal, mqar
from experiments.synthetic.sweep import parse_shard, take_shard
from xlstm_core.tasks import TrainConfig, evaluate, learning_rate, training

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=100, lr=1e-2, min_lr=1e-4, warmup=0.1)
    rates = [learning_rate(s, cfg) for s in range(100)]
    assert rates[0] == pytest.approx(1e-3) and rates[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:])) and rates[-1] == pytest.approx(1e-4, rel=0.05)
    with pytest.raises(ValueError):
        TrainConfig(lr=1e-4, min_lr=1e-3)


def test_formal_training_beats_chance_and_writes_the_report(tmp_path, monkeypatch):
    cfg = formal.FormalConfig(tasks=["parity"], models=["lstm", "transformer"], embedding_dim=16, num_heads=2,
                              train_lengths=(1, 12), test_lengths=(13, 30), lrs=[3e-2], val_samples=64,
                              test_samples=128, train={"steps": 80, "batch_size": 32})
    runs = formal.run_formal(cfg, tmp_path / "cache.jsonl", progress=False)
    lstm = runs.set_index("model").loc["LSTM"]
    assert lstm.test_acc > 0.9 and lstm.test_scaled > 0.8  # a classic LSTM learns parity and extrapolates
    assert set(runs.model) == {"LSTM", "Llama"} and (runs.params > 0).all()
    table = formal.write_report(runs, cfg, tmp_path)
    assert "| parity | regular |" in table
    for name in ("formal_runs.csv", "formal_summary.csv", "formal_summary.md", "formal_by_length.csv",
                 "formal_scaled_accuracy.png", "formal_accuracy_vs_length.png"):
        assert (tmp_path / name).stat().st_size > 0
    curves = pd.read_csv(tmp_path / "formal_by_length.csv")
    assert curves.length.min() >= 13 and curves.length.max() <= 30

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(formal, "run_one", no_training)
    again = formal.run_formal(cfg, tmp_path / "cache.jsonl", progress=False)
    assert again.test_acc.tolist() == runs.test_acc.tolist()
    cfg.tasks = ["parity", "dyck"]
    assert len(formal.run_formal(cfg, tmp_path / "cache.jsonl", progress=False, train_missing=False)) == 2


def test_best_learning_rate_is_chosen_on_validation():
    runs = pd.DataFrame({"task": "t", "model": "m", "seed": 0, "lr": [1e-3, 1e-2], "val_acc": [0.9, 0.6],
                         "test_scaled": [0.5, 0.99], "level": "regular"})
    assert formal.select_best(runs).lr.tolist() == [1e-3]
    assert formal.summarize(runs, ["m"], ["t"]).loc["t", "m"] == "0.50 ± 0.00"


def test_mqar_training_beats_chance(tmp_path):
    cfg = mqar.MQARConfig(models=["transformer"], widths=[32], settings=[[2, 12]], vocab_size=17, num_heads=2,
                          lrs=[1e-2], val_samples=64, test_samples=128, train={"steps": 150, "batch_size": 32})
    runs = mqar.run_mqar(cfg, progress=False)
    assert runs.test_acc.iloc[0] > 0.5  # chance is 1/8
    mqar.write_report(runs, cfg, tmp_path)
    assert (tmp_path / "mqar_accuracy_vs_pairs.png").exists() and "| 32 | 2 | 12 |" in (
        tmp_path / "mqar_summary.md").read_text()


def test_shards_split_the_runs_and_share_the_cache(tmp_path, monkeypatch):
    cfg = mqar.MQARConfig(models=["transformer", "lstm"], widths=[16], settings=[[2, 12]], vocab_size=17,
                          num_heads=2, lrs=[1e-2, 3e-3], val_samples=16, test_samples=16,
                          train={"steps": 2, "batch_size": 4})
    cache = tmp_path / "cache.jsonl"
    shards = [mqar.run_mqar(cfg, cache, progress=False, shard=(i, 3)) for i in range(3)]
    assert [len(s) for s in shards] == [2, 1, 1]
    trained = {(r.model, r.lr) for s in shards for r in s.itertuples()}
    assert trained == {(m, lr) for m in ("Llama", "LSTM") for lr in (1e-2, 3e-3)}

    def no_training(*args, **kwargs):
        raise AssertionError("a run finished by another shard was trained again")

    monkeypatch.setattr(mqar, "run_one", no_training)
    assert len(mqar.run_mqar(cfg, cache, progress=False, train_missing=False)) == 4
    assert len(cache.read_text().splitlines()) == 4


def test_a_diverged_run_is_recorded_and_the_sweep_goes_on(monkeypatch):
    real_train = training.train

    def diverge_at_high_lr(model, next_batch, cfg, **kwargs):
        if cfg.lr > 5e-3:
            raise FloatingPointError("non-finite loss at step 3")
        return real_train(model, next_batch, cfg, **kwargs)

    monkeypatch.setattr(training, "train", diverge_at_high_lr)
    cfg = mqar.MQARConfig(models=["transformer", {"arch": "lstm", "lrs": [1e-2]}], widths=[16], settings=[[2, 12]],
                          vocab_size=17, num_heads=2, lrs=[1e-2, 3e-3], val_samples=16, test_samples=16,
                          train={"steps": 2, "batch_size": 4})
    runs = mqar.run_mqar(cfg, progress=False)
    assert len(runs) == 3 and runs.diverged.str.contains("step 3").sum() == 2
    assert runs[runs.diverged != ""].test_acc.isna().all() and runs[runs.diverged == ""].test_acc.notna().all()
    table = mqar.summarize(runs, ["Llama", "LSTM"])
    assert table.loc[(16, 2, 12), "LSTM"] == "diverged" and table.loc[(16, 2, 12), "Llama"] != "diverged"


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1", "a/b", "1/0"])
def test_bad_shard_is_rejected(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_shard_round_robin():
    assert take_shard(list(range(7)), (1, 3)) == [1, 4] and take_shard([1, 2], None) == [1, 2]
    assert parse_shard("2/5") == (2, 5) and parse_shard(None) is None


def test_lm_run_lowers_validation_loss_on_local_text(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"m{i}.py").write_text("".join(f"def f_{j}(x):\n    return x + {j}\n\n" for j in range(40)))
    cfg = lm.LMConfig(corpus={"root": str(src), "vocab_size": 300, "val_fraction": 0.2,
                              "cache_dir": str(tmp_path / "cache")},
                      models=[{"arch": "xlstm[1:0]", "name": "mLSTMsig", "stack": {"mlstm_variant": "sig"}},
                              {"arch": "transformer", "name": "Llama"}],
                      embedding_dim=16, num_heads=2, seq_len=32, val_windows=8,
                      train={"steps": 30, "batch_size": 8, "eval_every": 10})
    runs = lm.run_lm(cfg, progress=False)
    for history in runs.history:
        assert history[-1]["val_loss"] < history[0]["val_loss"] and len(history) == 3
    assert runs.params.iloc[0] == pytest.approx(runs.params.iloc[1], rel=0.05)
    lm.write_report(runs, cfg, tmp_path)
    summary = pd.read_csv(tmp_path / "lm_summary.csv")
    assert summary.model.tolist() == ["mLSTMsig", "Llama"] and (summary.val_loss < 5.7).all()  # log(300) = 5.7
    assert (tmp_path / "lm_val_loss.png").exists()


def test_evaluate_reports_per_row_accuracy():
    from xlstm_core.tasks import make_split, make_task

    task = make_task("parity")
    data = make_split(task, 1, 6, 40, 0)

    class Oracle(torch.nn.Module):  # answers from the tokens themselves
        def forward(self, tokens):
            logits = torch.zeros(*tokens.shape, task.vocab_size)
            parity = ((tokens == 3).cumsum(1) % 2)
            logits.scatter_(2, (task.candidates[0] + parity).unsqueeze(-1), 1.0)
            return logits

    result = evaluate(Oracle(), data, batch_size=16)
    assert result.accuracy == 1.0 and result.row_accuracy.tolist() == [1.0] * 40


@pytest.mark.parametrize("area, scale", [("synthetic", "tiny"), ("synthetic", "gpu"), ("lm", "tiny"), ("lm", "gpu")])
def test_hydra_configs_compose_into_valid_experiments(area, scale):
    with initialize_config_dir(str(ROOT / "experiments" / area / "conf"), version_base=None):
        cfg = compose("config", overrides=[f"scale={scale}"])
    assert cfg.output_dir == f"outputs/{area}/{scale}"
    if area == "synthetic":
        experiment = formal.FormalConfig(**OmegaConf.to_container(cfg.formal))
        mqar.MQARConfig(**OmegaConf.to_container(cfg.mqar))
        assert experiment.train_lengths[1] < experiment.test_lengths[0]
    else:
        experiment = lm.LMConfig(**OmegaConf.to_container(cfg.experiment))
        baselines = ["Llama"] if scale == "gpu" else []  # the CPU default compares the two mLSTM variants only
        assert [m.name for m in experiment.models] == ["mLSTMexp", "mLSTMsig", *baselines]
