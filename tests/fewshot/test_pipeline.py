import numpy as np
import pandas as pd
import pytest
import torch

from fewshot import MLP, BenchmarkConfig, FlatModel, NeuralStateSpace, SequenceRegressor, TrainConfig, run_benchmark
from fewshot.adapt import UpdateRule, adapt_and_evaluate
from fewshot.meta import MetaConfig, meta_train
from fewshot.methods import build_method
from fewshot.metrics import Metric, mse, nse
from fewshot.report import write_report
from fewshot.search import grid_search
from fewshot.tasks import SinusoidFamily, make_tasks, sample_supports, stack_pool
from fewshot.training import collect_updates, pretrain

MSE = Metric("mse", "mean")


@pytest.fixture(scope="module")
def sinusoid():
    fam = SinusoidFamily(seed=0, train_pool=40, test_pool=30)
    torch.manual_seed(0)
    fm = FlatModel(MLP([1, 16, 16, 1]))
    return fam, fm, make_tasks(fam, "train", 12), make_tasks(fam, "test", 8)


def test_vmap_and_loop_paths_agree():
    torch.manual_seed(0)
    for module, x in ((MLP([2, 8, 1]), torch.randn(3, 5, 2)), (NeuralStateSpace(hidden=8), torch.randn(3, 4, 4, 3)),
                      (SequenceRegressor(5, hidden=6), torch.randn(3, 4, 4, 5))):
        fm = FlatModel(module)
        theta = fm.flatten() + 0.01 * torch.randn(3, fm.num_params)
        a = fm.predict(theta, x)
        fm.vectorize = False
        torch.testing.assert_close(a, fm.predict(theta, x), atol=1e-5, rtol=1e-5)


def test_state_space_model_starts_from_given_state():
    m = NeuralStateSpace(hidden=8)
    x = torch.zeros(2, 10, 3)
    x[:, :, 0] = torch.randn(2, 10)
    x[:, 0, 1:] = torch.tensor([[0.5, -0.2], [1.0, 0.3]])
    y = m(x)
    assert y.shape == (2, 10, 2)
    torch.testing.assert_close(y[:, 0], x[:, 0, 1:])


def test_metrics():
    y = torch.randn(2, 50, 1)
    assert torch.allclose(nse(y, y), torch.ones(2))
    assert torch.allclose(nse(y.mean(1, keepdim=True).expand_as(y), y), torch.zeros(2), atol=1e-6)
    assert torch.allclose(mse(y + 1, y), torch.ones(2))
    vals = np.random.default_rng(0).normal(3.0, 1.0, 200)
    lo, hi = MSE.bootstrap_ci(vals)
    assert lo < vals.mean() < hi and hi - lo < 0.4
    assert Metric("nse", "median", True).score(np.array([0.5, 0.7, 0.9])) == pytest.approx(-0.7)
    assert MSE.score(np.array([1.0, np.nan])) == float("inf")
    diverged = np.r_[np.ones(9), np.nan]
    assert MSE.reduce(diverged) == float("inf") and Metric("mse", "median").reduce(diverged) == 1.0
    assert Metric("mse", "median").bootstrap_ci(diverged) == (1.0, 1.0)


def test_pretraining_and_update_collection(sinusoid):
    fam, fm, train, _ = sinusoid
    cfg = TrainConfig(lr=0.01, max_steps=300, eval_every=10, patience=5)
    theta0 = pretrain(fm, [fam.nominal_task()], cfg)
    nominal = fam.nominal_task()
    before = fm.loss(fm.flatten()[None], nominal.x_test[None], nominal.y_test[None]).item()
    after = fm.loss(theta0[None], nominal.x_test[None], nominal.y_test[None]).item()
    assert after < 0.5 * before
    updates = collect_updates(fm, theta0, train, cfg, progress=False)
    assert updates.shape == (12, fm.num_params) and (updates.norm(dim=1) > 0).all()
    x, y = stack_pool(train, "test")
    assert (fm.loss(theta0 + updates, x, y) < fm.loss(theta0.expand(12, -1), x, y)).float().mean() > 0.8


def test_adaptation_checkpoints_and_grid_search_avoid_divergence(sinusoid):
    _, fm, _, test = sinusoid
    theta = fm.flatten()
    support, query = sample_supports(test, 10, seed=0), stack_pool(test, "test")
    curve = adapt_and_evaluate(fm, theta, query, query, UpdateRule("adam"), 0.01, [0, 5, 50], MSE)
    assert curve[50].mean() < curve[5].mean() < curve[0].mean()
    method = build_method("sgd", theta)
    choice = grid_search(fm, method, support, query, [0.03, 1e4], [1, 10, 30], MSE)
    assert choice.lr == 0.03 and choice.steps in (1, 10, 30) and np.isfinite(choice.score)
    assert grid_search(fm, build_method("no_finetune", theta), support, query, [], [], MSE).steps == 0


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd", "reptile"])
def test_meta_training_improves_post_adaptation_loss(sinusoid, method):
    _, fm, train, _ = sinusoid
    init = fm.flatten()
    cfg = MetaConfig(iterations=60, meta_batch=4, inner_steps=1, inner_lr=0.01, outer_lr=0.005,
                     reptile_step=0.5, query_size=10)
    out = meta_train(fm, init, train, method, 5, cfg, progress=False)
    assert out["theta"].shape == init.shape and not torch.equal(out["theta"], init)
    assert ("alpha" in out) == (method == "metasgd")
    m_before, m_after = build_method("maml", None, meta={"theta": init}), build_method(method, None, meta=out)
    support, query = sample_supports(train, 5, seed=1), stack_pool(train, "test")
    lr = 1.0 if method == "metasgd" else 0.01
    before = adapt_and_evaluate(fm, m_before.theta, support, query, m_before.rule, 0.01, [1], MSE)[1].mean()
    after = adapt_and_evaluate(fm, m_after.theta, support, query, m_after.rule, lr, [1], MSE)[1].mean()
    assert after < before


def test_maml_second_order_differs_from_first_order(sinusoid):
    _, fm, train, _ = sinusoid
    cfg = MetaConfig(iterations=1, meta_batch=2, inner_lr=0.1, outer_lr=0.01, query_size=5)
    a = meta_train(fm, fm.flatten(), train, "maml", 5, cfg, progress=False)["theta"]
    b = meta_train(fm, fm.flatten(), train, "fomaml", 5, cfg, progress=False)["theta"]
    assert not torch.allclose(a, b)


def _tiny_config(out_dir):
    return BenchmarkConfig(
        name="tiny", family={"kind": "sinusoid", "train_pool": 30, "test_pool": 20},
        model={"kind": "mlp", "sizes": [1, 8, 1]}, metric={"name": "mse", "aggregate": "mean"},
        support_sizes=[5, 10], methods=["subgd", "subgd_random", "no_finetune", "sgd", "fomaml"],
        grid={"steps": [1, 5], "lrs": {"sgd": [0.01, 0.03], "subgd": [0.3, 1.0]}},
        n_train_tasks=8, n_val_tasks=4, n_test_tasks=6, topk=3,
        pretrain={"lr": 0.01, "max_steps": 50, "eval_every": 10, "patience": 2},
        finetune={"lr": 0.01, "max_steps": 50, "eval_every": 10, "patience": 2},
        meta={"iterations": 5, "meta_batch": 2, "query_size": 5}, out_dir=str(out_dir), progress=False,
    )


def test_benchmark_end_to_end_writes_tables_and_resumes(tmp_path):
    cfg = _tiny_config(tmp_path)
    per_task = run_benchmark(cfg)
    assert len(per_task) == 5 * 2 * 6 and per_task["value"].notna().all()
    summary = write_report(per_task, MSE, tmp_path, "tiny")
    assert {"summary.csv", "summary.md", "support_curve.png", "per_task.csv"} <= {p.name for p in tmp_path.iterdir()}
    assert "subgd" in (tmp_path / "summary.md").read_text() and len(summary) == 10
    stamp = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    again = run_benchmark(cfg)
    pd.testing.assert_frame_equal(again.sort_values(["method", "support_size", "task"]).reset_index(drop=True),
                                  per_task.sort_values(["method", "support_size", "task"]).reset_index(drop=True),
                                  check_dtype=False)
    assert len(pd.read_csv(tmp_path / "per_task.csv")) == len(per_task)  # nothing recomputed
    assert stamp == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}


def test_benchmark_config_validation(tmp_path):
    with pytest.raises(ValueError, match="unknown methods"):
        BenchmarkConfig(**{**_tiny_config(tmp_path).__dict__, "methods": ["subgd", "prototypical"]})
    with pytest.raises(ValueError, match="pretrain_on"):
        BenchmarkConfig(**{**_tiny_config(tmp_path).__dict__, "pretrain_on": "imagenet"})


def test_slstm_sequence_regressor_from_xlstm_core():
    pytest.importorskip("xlstm_core")
    torch.manual_seed(0)
    fm = FlatModel(SequenceRegressor(5, hidden=8, cell="slstm", num_heads=2), vectorize=False)
    theta = fm.flatten().expand(2, -1).clone().requires_grad_(True)
    x, y = torch.randn(2, 3, 6, 5), torch.randn(2, 3, 1)
    loss = fm.loss(theta, x, y)
    assert loss.shape == (2,)
    loss.sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    # The last-step prediction depends on the first input: information is carried by the recurrent state.
    x2 = x.clone()
    x2[:, :, 0] += 1.0
    assert not torch.allclose(fm.predict(theta.detach(), x2), fm.predict(theta.detach(), x))
