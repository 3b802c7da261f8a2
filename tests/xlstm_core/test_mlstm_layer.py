"""The pre-up layer's up-projection (xlstm_core/mlstm_layer.py): in training its bias rides in the GEMM as a weight
column over an input column of ones, so that the weight-gradient GEMM forms the bias gradient."""
import torch
import torch.nn.functional as F

from xlstm_core import mlstm_layer
from xlstm_core.mlstm_layer import BIAS_COLUMNS, _up_projection


def leaves(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()
            for shape in ((2, 5, 12), (24, 12), (24,))]


def test_training_form_matches_linear_in_value_and_gradients():
    x, weight, bias = leaves()
    y = _up_projection(x, weight, bias)
    y_ref = F.linear(x, weight, bias)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for name, a, b in zip(("x", "weight", "bias"), torch.autograd.grad(y, (x, weight, bias), dy),
                          torch.autograd.grad(y_ref, (x, weight, bias), dy)):
        torch.testing.assert_close(a, b, msg=name)


def test_training_form_puts_the_bias_in_the_gemm(monkeypatch):
    """One product over (tokens, in + BIAS_COLUMNS) inputs with no bias argument; without autograd (inference) or
    without a bias, the plain linear with its fused bias epilogue."""
    calls = []
    linear = F.linear
    monkeypatch.setattr(mlstm_layer.F, "linear", lambda x, w, b=None: calls.append((x.shape, b is None))
                        or linear(x, w, b))
    x, weight, bias = leaves()
    _up_projection(x, weight, bias)
    with torch.no_grad():
        _up_projection(x, weight, bias)
    _up_projection(x, weight, None)
    assert calls == [((10, 12 + BIAS_COLUMNS), True), ((10, 12), False), ((10, 12), True)]

