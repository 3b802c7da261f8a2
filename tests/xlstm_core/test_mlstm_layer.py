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



def test_folded_weights_hand_every_parameter_a_gradient_in_its_own_layout():
    """The fold reads the q / k / v blocks through a stack and the gate weights through a transposed cat; their
    gradients must still arrive in the parameters' (contiguous) layout, or AccumulateGrad copies each one outside a
    compiled graph (120 copies per ViL-T training step)."""
    from xlstm_core.config import xLSTMBlockStackConfig
    from xlstm_core.mlstm_layer import fold_weights, mLSTMPreUpLayer

    cfg = xLSTMBlockStackConfig(embedding_dim=16, num_heads=2, num_blocks=2, conv_mode="grid2d", conv_kernel_size=3,
                                dense_qkv=True, bias=True)
    torch.manual_seed(0)
    layers = [mLSTMPreUpLayer(cfg) for _ in range(2)]
    arriving = {}
    for i, layer in enumerate(layers):
        for name, p in layer.named_parameters():
            p.register_hook(lambda g, key=f"{i}.{name}", p=p: arriving.update({key: (g.stride(), p.stride())}))
    folded = fold_weights(layers)
    sum(t.square().sum() for f in folded for t in f if t is not None).backward()
    for name in ("q.weight", "k.weight", "v.weight", "igate.weight", "fgate.weight"):
        assert f"0.{name}" in arriving, name
    wrong = {key: strides for key, strides in arriving.items() if strides[0] != strides[1]}
    assert not wrong, wrong
