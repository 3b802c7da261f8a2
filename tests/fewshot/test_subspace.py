import pytest
import torch
from torch import nn

from fewshot import FlatModel, SubspaceOptimizer, fit_subspace
from fewshot.adapt import UpdateRule, adapt_and_evaluate
from fewshot.metrics import Metric


def _updates(n=6, p=9, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def _explicit_preconditioner(u: torch.Tensor, k: int | None, weighted: bool) -> torch.Tensor:
    """P = V_k diag(λ_k / Σλ_k) V_kᵀ from the eigendecomposition of the p×p auto-correlation."""
    u = u.double()
    evals, evecs = torch.linalg.eigh(u.T @ u / len(u))
    order = evals.argsort(descending=True)
    evals, evecs = evals[order], evecs[:, order]
    keep = int((evals > 1e-9 * evals[0]).sum()) if k is None else k
    evals, evecs = evals[:keep], evecs[:, :keep]
    w = evals / evals.sum() if weighted else torch.ones_like(evals)
    return (evecs * w) @ evecs.T


@pytest.mark.parametrize("k", [None, 3])
@pytest.mark.parametrize("weighted", [True, False])
def test_preconditioner_matches_explicit_formula(k, weighted):
    u = _updates()
    sub = fit_subspace(u, k=k, weighted=weighted)
    assert sub.dim == (6 if k is None else k)
    torch.testing.assert_close(sub.matrix().double(), _explicit_preconditioner(u, k, weighted), atol=1e-5, rtol=1e-4)
    if weighted:
        assert sub.scale.sum().item() == pytest.approx(1.0, abs=1e-6)


def test_randomised_svd_path_matches_exact_spectrum():
    g = torch.Generator().manual_seed(1)
    low_rank = torch.randn(300, 4, generator=g) @ torch.randn(4, 500, generator=g)
    u = low_rank + 1e-3 * torch.randn(300, 500, generator=g)
    fast = fit_subspace(u, k=4)  # 4 * (4 + 10) < 300: randomised branch
    exact = torch.linalg.svdvals(u.double())[:4].square() / 300
    torch.testing.assert_close(fast.eigenvalues.double(), exact, rtol=1e-3, atol=0)
    # Same subspace: projector difference is tiny.
    ref = torch.linalg.svd(u.double(), full_matrices=False)[2][:4].T
    assert torch.linalg.norm(fast.basis.double() @ fast.basis.double().T - ref @ ref.T) < 1e-3


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))  # p = 13


def _loss(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 2, generator=g), torch.randn(16, 1, generator=g)
    return ((net(x) - y) ** 2).mean()


def test_optimizer_step_is_preconditioned_gradient_step():
    net = _net()
    u = _updates(n=8, p=13)
    opt = SubspaceOptimizer(net.parameters(), u, lr=0.5)
    theta = nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    opt.zero_grad()
    _loss(net).backward()
    grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
    opt.step()
    expected = theta - 0.5 * (_explicit_preconditioner(u, None, True).float() @ grad)
    torch.testing.assert_close(nn.utils.parameters_to_vector(net.parameters()), expected, atol=1e-6, rtol=1e-5)


def test_updates_stay_in_span_of_topk_basis():
    net = _net()
    opt = SubspaceOptimizer(net.parameters(), _updates(n=8, p=13), lr=0.3, k=3)
    v = opt.subspace.basis
    theta0 = nn.utils.parameters_to_vector(net.parameters()).detach().clone()
    for i in range(5):
        opt.zero_grad()
        _loss(net, seed=i).backward()
        opt.step()
    delta = nn.utils.parameters_to_vector(net.parameters()).detach() - theta0
    assert delta.norm() > 1e-3
    assert (delta - v @ (v.T @ delta)).norm() < 1e-5 * delta.norm()


def test_full_basis_unweighted_reduces_to_gradient_descent():
    net_a, net_b = _net(), _net()
    opt_a = SubspaceOptimizer(net_a.parameters(), _updates(n=20, p=13), lr=0.1, weighted=False)
    assert opt_a.subspace.dim == 13
    opt_b = torch.optim.SGD(net_b.parameters(), lr=0.1)
    for i in range(5):
        for net, opt in ((net_a, opt_a), (net_b, opt_b)):
            opt.zero_grad()
            _loss(net, seed=i).backward()
            opt.step()
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-5)


def test_state_dict_round_trip_carries_the_subspace():
    net_a, net_b = _net(), _net()
    opt_a = SubspaceOptimizer(net_a.parameters(), _updates(n=8, p=13, seed=1), lr=0.2, k=4)
    opt_b = SubspaceOptimizer(net_b.parameters(), _updates(n=8, p=13, seed=2), lr=0.7)
    state = opt_a.state_dict()
    opt_b.load_state_dict(state)
    assert opt_b.param_groups[0]["lr"] == 0.2
    torch.testing.assert_close(opt_b.subspace.basis, opt_a.subspace.basis)
    for net, opt in ((net_a, opt_a), (net_b, opt_b)):
        opt.zero_grad()
        _loss(net).backward()
        opt.step()
    for pa, pb in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(pa, pb)


def test_random_basis_ablation_is_orthonormal_with_same_scales():
    u = _updates(n=8, p=30)
    eig, rnd = fit_subspace(u, k=5), fit_subspace(u, k=5, basis="random", seed=3)
    torch.testing.assert_close(rnd.basis.T @ rnd.basis, torch.eye(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(rnd.scale, eig.scale)
    assert (eig.basis.T @ rnd.basis).abs().max() < 0.9  # not the eigenbasis


@pytest.mark.parametrize(
    "updates, kwargs, match",
    [
        (torch.zeros(0, 13), {}, "at least one"),
        (torch.randn(13), {}, r"shape \(N, p\)"),
        (torch.randn(4, 12), {}, "13 elements"),
        (torch.randn(4, 13), {"k": 5}, "k must be"),
        (torch.zeros(4, 13), {}, "all zero"),
        (torch.full((4, 13), float("nan")), {}, "NaN"),
        (torch.randn(4, 13), {"basis": "pca"}, "basis must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(updates, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubspaceOptimizer(_net().parameters(), updates, lr=0.1, **kwargs)


def test_optimizer_matches_batched_subgd_adaptation():
    """The reusable optimizer and the batched benchmark path implement the same update."""
    net = _net()
    fm = FlatModel(net)
    theta0 = fm.flatten()
    sub = fit_subspace(_updates(n=8, p=13), k=5)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 16, 2, generator=g), torch.randn(1, 16, 1, generator=g)
    metric = Metric("mse", "mean")
    batched = adapt_and_evaluate(fm, theta0, (x, y), (x, y), UpdateRule("sgd", sub.precondition), 0.4, [3], metric)[3]
    opt = SubspaceOptimizer(net.parameters(), sub, lr=0.4)
    for _ in range(3):
        opt.zero_grad()
        ((net(x[0]) - y[0]) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        assert ((net(x[0]) - y[0]) ** 2).mean().item() == pytest.approx(batched.item(), rel=1e-5)
