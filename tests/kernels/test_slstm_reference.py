"""Reference sLSTM (and LSTM cell): known answers, state carry-over, gradients, extremes and input checks."""
import pytest
import torch

from kernels import slstm


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def make_inputs(B=2, T=9, NH=2, DH=3, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 4 * NH * DH, generator=g, dtype=torch.float64) * scale
    r = torch.randn(4, NH, DH, DH, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(4 * NH * DH, generator=g, dtype=torch.float64) * 0.1
    return x.to(dtype), r.to(dtype), b.to(dtype)


def unstabilised_slstm(x, r, b, num_heads):
    """The sLSTM without the m stabiliser, in fp64: c, n accumulate exp(i) directly (valid for moderate gates)."""
    B, T, width = x.shape
    hidden = width // 4
    dh = hidden // num_heads
    c = n = h = torch.zeros(B, hidden, dtype=torch.float64)
    out = []
    for t in range(T):
        rec = torch.cat([torch.cat([h[:, hd * dh:(hd + 1) * dh] @ r[g, hd] for hd in range(num_heads)], 1)
                         for g in range(4)], 1)
        i, f, z, o = (x[:, t] + b + rec).split(hidden, dim=1)
        c = torch.sigmoid(f) * c + torch.exp(i) * torch.tanh(z)
        n = torch.sigmoid(f) * n + torch.exp(i)
        h = torch.sigmoid(o) * c / n
        out.append(h)
    return torch.stack(out, 1)


def test_matches_unstabilised_formula():
    x, r, b = make_inputs(T=15)
    assert rel_err(slstm(x, recurrent_weight=r, bias=b, num_heads=2), unstabilised_slstm(x, r, b, 2)) < 1e-12


def test_lstm_cell_equals_torch_lstm():
    torch.manual_seed(0)
    H, D_in, B, T = 5, 3, 2, 7
    lstm = torch.nn.LSTM(D_in, H, batch_first=True).double()
    inp = torch.randn(B, T, D_in, dtype=torch.float64)
    x = inp @ lstm.weight_ih_l0.T  # torch's gate order (i, f, g, o) is ours (i, f, z, o)
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    r = lstm.weight_hh_l0.view(4, H, H).transpose(1, 2).unsqueeze(1)  # (4, 1, H, H): h @ W_hh[g]^T
    ours, (c, _, _, h_last) = slstm(x, recurrent_weight=r, bias=bias, num_heads=1, cell="lstm",
                                    return_last_state=True)
    ref, (h_ref, c_ref) = lstm(inp)
    assert rel_err(ours, ref) < 1e-12
    assert rel_err(c, c_ref[0]) < 1e-12 and rel_err(h_last, h_ref[0]) < 1e-12


@pytest.mark.parametrize("cell", ["slstm", "lstm"])
def test_split_sequence_with_state_equals_whole(cell):
    x, r, b = make_inputs(T=20)
    whole, whole_state = slstm(x, recurrent_weight=r, bias=b, num_heads=2, cell=cell, return_last_state=True)
    h1, s1 = slstm(x[:, :8], recurrent_weight=r, bias=b, num_heads=2, cell=cell, return_last_state=True)
    h2, s2 = slstm(x[:, 8:], recurrent_weight=r, bias=b, num_heads=2, cell=cell, initial_state=s1,
                   return_last_state=True)
    assert rel_err(torch.cat([h1, h2], 1), whole) < 1e-12
    for a, w in zip(s2, whole_state):
        assert torch.allclose(a, w)


@pytest.mark.parametrize("cell", ["slstm", "lstm"])
def test_gradcheck_fp64(cell):
    x, r, b = make_inputs(B=1, T=4, NH=2, DH=2)
    x, r, b = (t.requires_grad_() for t in (x, r, b))
    state = tuple(torch.rand(1, 4, dtype=torch.float64) + 0.5 for _ in range(4))
    state = tuple(s.requires_grad_() for s in state)

    def fn(x, r, b, c0, n0, m0, h0):
        h, st = slstm(x, recurrent_weight=r, bias=b, num_heads=2, cell=cell, initial_state=(c0, n0, m0, h0),
                      return_last_state=True)
        return h, st[0], st[1]

    assert torch.autograd.gradcheck(fn, (x, r, b, *state), eps=1e-6, atol=1e-5)


def test_extreme_preactivations_long_sequence_stay_finite():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 4096, 4 * 2 * 4, generator=g) * 100 - 50
    r = torch.randn(4, 2, 4, 4, generator=g)
    b = torch.zeros(32)
    with torch.no_grad():
        h, state = slstm(x, recurrent_weight=r, bias=b, num_heads=2, return_last_state=True)
    assert torch.isfinite(h).all() and all(torch.isfinite(s).all() for s in state)
    assert (state[1] >= 1.0 - 1e-6).all(), "the normaliser stays >= 1 from the empty state"
    # gradients through a shorter stretch of the same extreme inputs (the Python loop's backward is slow)
    x_short = x[:, :512].clone().requires_grad_()
    slstm(x_short, recurrent_weight=r, bias=b, num_heads=2).sum().backward()
    assert torch.isfinite(x_short.grad).all()


def test_state_dtype_is_fp32_for_low_precision_inputs():
    x, r, b = make_inputs(dtype=torch.bfloat16)
    h, state = slstm(x, recurrent_weight=r, bias=b, num_heads=2, return_last_state=True)
    assert h.dtype == torch.bfloat16 and all(s.dtype == torch.float32 for s in state)
    ref = slstm(x.double(), recurrent_weight=r.double(), bias=b.double(), num_heads=2)
    assert rel_err(h, ref) < 2e-2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=torch.zeros(2, 3)), "x must have 3 dims"),
        (dict(x=torch.zeros(2, 3, 10)), "divisible by 4\\*num_heads"),
        (dict(recurrent_weight=torch.zeros(4, 2, 3, 2)), "recurrent_weight must have shape"),
        (dict(bias=torch.zeros(5)), "bias must have shape"),
        (dict(num_heads=0), "num_heads must be a positive int"),
        (dict(cell="gru"), "cell must be one of"),
        (dict(initial_state=(torch.zeros(2, 6),) * 3), "initial_state must be a tuple"),
        (dict(x=torch.zeros(2, 3, 24, dtype=torch.int32)), "unsupported dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    x, r, b = make_inputs(dtype=torch.float32)
    args = dict(x=x, recurrent_weight=r, bias=b, num_heads=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        slstm(args.pop("x"), **args)
