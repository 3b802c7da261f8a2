"""Reference mLSTM: every form agrees with the parallel form; states, gradients, extremes and input checks."""
import pytest
import torch

from kernels import mlstm, mlstm_step
from kernels.mlstm import reference

# fp32 error grows where |n^T q| is small (the division amplifies rounding); 1e-3 is the stated fp32 bound.
TOL = {torch.float64: 1e-9, torch.float32: 1e-3, torch.bfloat16: 3e-2}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_inputs(B=2, NH=2, S=33, DQK=8, DV=6, dtype=torch.float32, gate_scale=3.0, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(B, NH, S, DQK, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, NH, S, DV, generator=g, dtype=torch.float64)
    i = torch.randn(B, NH, S, generator=g, dtype=torch.float64) * gate_scale
    f = torch.randn(B, NH, S, generator=g, dtype=torch.float64) * gate_scale + 2.0
    out = [t.to(dtype).requires_grad_(requires_grad) for t in (q, k, v, i, f)]
    return out


def random_state(B=2, NH=2, DQK=8, DV=6, variant="exp", seed=1):
    """A state with m != 0 for both variants (for sig, m is a scale that every form folds into C and n)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(B, NH, generator=g)
    return torch.randn(B, NH, DQK, DV, generator=g), torch.randn(B, NH, DQK, generator=g).abs(), m


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("S", [1, 7, 64, 100, 513])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_forms_match_parallel(variant, S, dtype):
    q, k, v, i, f = make_inputs(S=S, dtype=dtype, seed=S)
    # The reference truth is always the fp64 parallel form; each form in `dtype` must be within that dtype's tolerance.
    truth, truth_state = mlstm(*(t.double() for t in (q, k, v)), igate=i.double(), fgate=f.double(),
                               variant=variant, form="parallel", return_last_state=True)
    runs = [("parallel", 64), ("recurrent", 64)] + [("chunkwise", c) for c in (1, 16, 64, 128)]
    for form, chunk in runs:
        if form == "recurrent" and S == 513 and dtype != torch.float32:
            continue  # the step loop is slow in Python; one dtype covers it at this length
        h, state = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form=form, chunk_size=chunk,
                         return_last_state=True)
        assert h.dtype == dtype and h.shape == truth.shape
        assert rel_err(h, truth) < TOL[dtype], (form, chunk)
        for got, want in zip(state, truth_state):
            assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert rel_err(got, want) < TOL[dtype] + 1e-6, (form, chunk)


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("form", ["parallel", "chunkwise", "recurrent"])
def test_split_sequence_with_state_equals_whole(variant, form):
    q, k, v, i, f = make_inputs(S=50, dtype=torch.float64)
    whole, whole_state = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form=form, chunk_size=8,
                               return_last_state=True)
    cut = 23
    h1, s1 = mlstm(q[:, :, :cut], k[:, :, :cut], v[:, :, :cut], igate=i[:, :, :cut], fgate=f[:, :, :cut],
                   variant=variant, form=form, chunk_size=8, return_last_state=True)
    h2, s2 = mlstm(q[:, :, cut:], k[:, :, cut:], v[:, :, cut:], igate=i[:, :, cut:], fgate=f[:, :, cut:],
                   variant=variant, form=form, chunk_size=8, initial_state=s1, return_last_state=True)
    assert rel_err(torch.cat([h1, h2], dim=2), whole) < 1e-10
    for a, b in zip(s2, whole_state):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_initial_state_agrees_across_forms(variant):
    q, k, v, i, f = make_inputs(S=40, dtype=torch.float64)
    state = tuple(s.double() for s in random_state(variant=variant))
    ref, ref_state = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form="parallel", initial_state=state,
                           return_last_state=True)
    for form in ("chunkwise", "recurrent"):
        h, s = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form=form, chunk_size=16, initial_state=state,
                     return_last_state=True)
        assert rel_err(h, ref) < 1e-10
        for a, b in zip(s, ref_state):
            assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_step_api_matches_sequence(variant):
    q, k, v, i, f = make_inputs(S=12)
    ref = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form="parallel")
    state = None
    for t in range(12):
        h, state = mlstm_step(q[:, :, t], k[:, :, t], v[:, :, t], igate=i[:, :, t], fgate=f[:, :, t], state=state,
                              variant=variant)
        assert rel_err(h, ref[:, :, t]) < 1e-4


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_chunkwise_gradients_match_parallel(variant):
    inputs = make_inputs(S=37, dtype=torch.float64, requires_grad=True)
    state = [s.double().requires_grad_() for s in random_state(variant=variant)]
    grads = []
    for form in ("parallel", "chunkwise", "recurrent"):
        q, k, v, i, f = inputs
        h, (c, n, m) = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form=form, chunk_size=8,
                             initial_state=tuple(state), return_last_state=True)
        loss = (h * torch.linspace(-1, 1, h.shape[-1], dtype=h.dtype)).sum() + c.sum() + 0.5 * n.sum()
        grads.append(torch.autograd.grad(loss, [*inputs, *state]))
    for other in grads[1:]:
        for a, b in zip(other, grads[0]):
            assert rel_err(a, b) < 1e-8


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("form", ["parallel", "chunkwise"])
def test_gradcheck_fp64(variant, form):
    q, k, v, i, f = make_inputs(B=1, NH=1, S=5, DQK=3, DV=2, dtype=torch.float64, requires_grad=True, gate_scale=1.0)

    def fn(q, k, v, i, f):
        return mlstm(q, k, v, igate=i, fgate=f, variant=variant, form=form, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (q, k, v, i, f), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_extreme_gates_long_sequence_stay_finite(variant):
    B, NH, S = 1, 2, 4096
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(2, B, NH, S, 16, generator=g)
    v = torch.randn(B, NH, S, 16, generator=g)
    i = (torch.rand(B, NH, S, generator=g) * 100 - 50).requires_grad_()
    f = (torch.rand(B, NH, S, generator=g) * 100 - 50).requires_grad_()
    h, state = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form="chunkwise", chunk_size=64,
                     return_last_state=True)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in state)
    h.square().sum().backward()
    assert torch.isfinite(i.grad).all() and torch.isfinite(f.grad).all()
    # fp32 forms stay close to the fp64 truth at this length, including under extreme gates
    truth = mlstm(q.double(), k.double(), v.double(), igate=i.detach().double(), fgate=f.detach().double(),
                  variant=variant, form="parallel")
    assert rel_err(h.detach(), truth) < TOL[torch.float32]
    parallel = mlstm(q, k, v, igate=i.detach(), fgate=f.detach(), variant=variant, form="parallel")
    assert rel_err(parallel, truth) < TOL[torch.float32]


@pytest.mark.parametrize("form", ["parallel", "chunkwise", "recurrent"])
def test_very_negative_input_gates_give_finite_gradients(form):
    """All input gates below -88 put the stabiliser m below -88, where exp(-m) overflows fp32: h is ~0 and every
    gradient must stay finite (it was NaN: 0 * inf in the normaliser's backward)."""
    q, k, v = torch.randn(3, 1, 2, 12, 8, generator=torch.Generator().manual_seed(0)).unbind(0)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    i = torch.full((1, 2, 12), -150.0).requires_grad_()
    f = torch.full((1, 2, 12), 2.0).requires_grad_()
    h = mlstm(q, k, v, igate=i, fgate=f, variant="exp", form=form, chunk_size=4)
    assert torch.isfinite(h).all() and h.abs().max() < 1e-30
    (h.sum() + (q * k).sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v, i, f))


def test_cu_seqlens_equals_separate_sequences():
    lengths = [5, 17, 9]
    parts = [make_inputs(B=1, S=s, seed=s) for s in lengths]
    packed = [torch.cat(ts, dim=2) for ts in zip(*parts)]
    cu = torch.tensor([0, 5, 22, 31])
    states = [tuple(s[:1] for s in random_state(seed=s)) for s in lengths]
    init = tuple(torch.cat(x, 0) for x in zip(*states))
    h, last = mlstm(*packed[:3], igate=packed[3], fgate=packed[4], cu_seqlens=cu, initial_state=init,
                    return_last_state=True, chunk_size=4)
    start = 0
    for index, (length, (q, k, v, i, f)) in enumerate(zip(lengths, parts)):
        hs, ss = mlstm(q, k, v, igate=i, fgate=f, initial_state=states[index], return_last_state=True)
        assert rel_err(h[:, :, start : start + length], hs) < 1e-5
        for a, b in zip(last, ss):
            assert rel_err(a[index : index + 1], b) < 1e-5
        start += length


def test_empty_state_is_zero_memory():
    c, n, m = reference.empty_state(1, 1, 2, 3, "exp", "cpu", torch.float32)
    assert c.abs().sum() == 0 and n.abs().sum() == 0 and torch.isneginf(m).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: {**a, "q": a["q"][0]}, "q must have 4 dims"),
        (lambda a: {**a, "k": a["k"][:, :, :-1]}, "k must have shape"),
        (lambda a: {**a, "v": a["v"].double()}, "share one dtype"),
        (lambda a: {**a, "igate": a["igate"][..., :-1]}, "igate must have shape"),
        (lambda a: {**a, "q": a["q"].int()}, "unsupported dtype"),
        (lambda a: {**a, "variant": "tanh"}, "variant must be one of"),
        (lambda a: {**a, "form": "magic"}, "form must be one of"),
        (lambda a: {**a, "chunk_size": 0}, "chunk_size must be a positive int"),
        (lambda a: {**a, "backend": "cuda"}, "backend must be one of"),
        (lambda a: {**a, "initial_state": (torch.zeros(1), torch.zeros(1), torch.zeros(1))}, "initial_state C"),
        (lambda a: {**a, "cu_seqlens": torch.tensor([0, 3, 2])}, "cu_seqlens must"),
    ],
)
def test_bad_inputs_raise_clear_errors(mutate, message):
    q, k, v, i, f = make_inputs(B=1, S=8)
    args = dict(q=q, k=k, v=v, igate=i, fgate=f)
    args = mutate(args)
    with pytest.raises(ValueError, match=message):
        mlstm(args.pop("q"), args.pop("k"), args.pop("v"), **args)
