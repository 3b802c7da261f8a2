"""DA methods, candidate training and its cache, and a miniature end-to-end comparison."""
import numpy as np
import pytest
import torch

from adaptation import DA_METHODS, BackboneConfig, Classifier, TrainConfig, make_method
from adaptation.candidates import candidate_predictions
from adaptation.data import DatasetConfig, build_scenarios
from adaptation.methods import DABatch
from adaptation.pipeline import experiment_config, run_experiment
from adaptation.report import summarize, to_markdown, write_report


@pytest.mark.parametrize("name", sorted(DA_METHODS))
def test_method_loss_is_finite_and_differentiable(name):
    torch.manual_seed(0)
    model = Classifier((5,), 3, BackboneConfig(hidden=16))
    method = make_method(name, 16, 3, seed=0)
    xs, xt = torch.randn(32, 5), torch.randn(32, 5) + 1.0
    fs, ls = model(xs)
    ft, lt = model(xt)
    loss = method(DABatch(model, xs, torch.randint(0, 3, (32,)), xt, fs, ls, ft, lt))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() >= -1e-6
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


def test_discrepancies_vanish_for_identical_batches():
    f = torch.randn(40, 8)
    model = Classifier((8,), 2, BackboneConfig(hidden=8))
    logits = torch.randn(40, 2)
    for name in ("CORAL", "MMD", "CMD", "HoMM"):
        batch = DABatch(model, f, torch.zeros(40, dtype=torch.long), f, f, logits, f, logits)
        assert make_method(name, 8, 2)(batch).item() == pytest.approx(0.0, abs=1e-5), name


def test_adversarial_method_reverses_feature_gradient():
    torch.manual_seed(0)
    method = make_method("DANN", 4, 2)
    fs, ft = torch.randn(16, 4, requires_grad=True), torch.randn(16, 4)
    batch = DABatch(None, None, None, None, fs, None, ft, None)
    method(batch).backward()
    # Gradient reversal: the features' gradient is the negative of the discriminator-input gradient.
    fs2 = fs.detach().clone().requires_grad_(True)
    from adaptation.methods import _domain_bce
    _domain_bce(method.discriminator(fs2), method.discriminator(ft)).backward()
    torch.testing.assert_close(fs.grad, -fs2.grad)


def test_candidates_are_cached_and_deterministic(tmp_path, monkeypatch):
    (sc,) = build_scenarios(DatasetConfig(name="moons", sizes=(200, 100, 100), options={"n": 400}))
    args = {"backbone": BackboneConfig(hidden=8, depth=1), "train": TrainConfig(steps=20, batch_size=32)}
    first = candidate_predictions(sc, "CORAL", [0.0, 1.0], 0, cache_dir=tmp_path, tag="t", **args)
    assert first["target_test"].shape == (2, 100, 2)
    import adaptation.candidates as cand

    monkeypatch.setattr(cand, "train_candidate", lambda *a, **k: pytest.fail("cache miss: retrained"))
    again = candidate_predictions(sc, "CORAL", [0.0, 1.0], 0, cache_dir=tmp_path, tag="t", **args)
    np.testing.assert_array_equal(first["source_val"], again["source_val"])
    monkeypatch.undo()
    fresh = candidate_predictions(sc, "CORAL", [0.0, 1.0], 0, cache_dir=tmp_path / "other", tag="t", **args)
    np.testing.assert_allclose(first["target_val"], fresh["target_val"], atol=1e-6)


def test_miniature_experiment_end_to_end(tmp_path):
    cfg = experiment_config({
        "datasets": [{"data": {"name": "moons", "sizes": [200, 120, 100], "options": {"n": 450}},
                      "backbone": {"hidden": 8, "depth": 1}}],
        "methods": ["DANN", "MMD"], "lambdas": [0.0, 0.1, 1.0], "seeds": [0, 1],
        "train": {"steps": 20, "batch_size": 32},
        "weighter": {"estimator": "logistic"},
        "cache_dir": str(tmp_path / "cache"), "progress": False,
    })
    results = run_experiment(cfg)
    assert len(results) == 2 * 2 * 9 and results["target_acc"].between(0, 1).all()
    table = write_report(results, tmp_path / "out")
    assert {"results.csv", "table.md", "table.png", "iwa_wins.csv"} <= {p.name for p in (tmp_path / "out").iterdir()}
    md = to_markdown(table)
    assert md.startswith("| dataset | SourceOnly | IWA | IWV | DEV") and "moons" in md
    # TargetOracle is the best single candidate on the test labels: no single-model selector can beat it.
    for s in ("IWV", "DEV", "SourceOnly"):
        assert (table[("TargetOracle", "mean")] >= table[(s, "mean")] - 1e-12).all()
    by_method = summarize(results, by=("dataset", "method"))
    assert len(by_method) == 2


def test_experiment_config_rejects_unknown_keys():
    with pytest.raises(TypeError):
        experiment_config({"datasets": [], "unknown": 1})


def test_xlstm_backbone_shapes():
    pytest.importorskip("xlstm_core", exc_type=ImportError)
    torch.manual_seed(0)
    model = Classifier((3, 16), 4, BackboneConfig(name="xlstm", hidden=16, depth=2, num_heads=2, slstm_at=[1],
                                                  chunk_size=8))
    feats, logits = model(torch.randn(2, 3, 16))
    assert feats.shape == (2, 16) and logits.shape == (2, 4) and torch.isfinite(logits).all()
