"""Block stack: shapes, causality, step == forward, split with state, reversed blocks, config errors."""
import pytest
import torch

from xlstm_core import xLSTMBlockStack, xLSTMBlockStackConfig
from xlstm_core.state import map_state


def make_stack(**kw):
    torch.manual_seed(0)
    cfg = dict(embedding_dim=32, num_blocks=3, num_heads=4, slstm_at=[1], chunk_size=4)
    cfg.update(kw)
    return xLSTMBlockStack(xLSTMBlockStackConfig(**cfg)).eval()


@pytest.mark.parametrize("mlstm_block", ["pre_up", "post_up"])
@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_step_by_step_equals_full_forward(mlstm_block, variant):
    stack = make_stack(mlstm_block=mlstm_block, mlstm_variant=variant)
    x = torch.randn(2, 13, 32)
    full = stack(x)
    state, outs = None, []
    for t in range(13):
        y, state = stack.step(x[:, t], state)
        outs.append(y)
    assert torch.allclose(torch.stack(outs, 1), full, atol=1e-5)


def test_split_with_state_equals_whole_and_state_is_constant_size():
    stack = make_stack()
    x = torch.randn(2, 20, 32)
    whole, whole_state = stack(x, return_state=True)
    a, s = stack(x[:, :9], return_state=True)
    sizes = [t.numel() for t in _leaves(s)]
    b, s2 = stack(x[:, 9:], s)
    assert torch.allclose(torch.cat([a, b], 1), whole, atol=1e-5)
    assert [t.numel() for t in _leaves(s2)] == sizes == [t.numel() for t in _leaves(whole_state)]


def _leaves(state):
    out = []
    map_state(state, lambda t: out.append(t) or t)
    return out


def test_causal_output_ignores_future():
    stack = make_stack()
    x = torch.randn(1, 10, 32)
    x2 = x.clone()
    x2[:, 6:] = torch.randn(1, 4, 32)
    assert torch.allclose(stack(x)[:, :6], stack(x2)[:, :6], atol=1e-6)
    assert not torch.allclose(stack(x)[:, 6:], stack(x2)[:, 6:])


def test_reversed_block_reads_sequence_backwards():
    stack = make_stack(num_blocks=1, slstm_at=[], reverse_at=[0])
    forward_twin = make_stack(num_blocks=1, slstm_at=[])
    forward_twin.load_state_dict(stack.state_dict())
    x = torch.randn(2, 9, 32)
    # a reversed block is the forward block applied to the flipped sequence, flipped back
    assert torch.allclose(stack(x), forward_twin(x.flip(1)).flip(1), atol=1e-6)
    # so the first output depends on the last input (anti-causal)
    x2 = x.clone()
    x2[:, -1] = torch.randn(2, 32)
    assert not torch.allclose(stack(x)[:, 0], stack(x2)[:, 0])
    with pytest.raises(ValueError, match="not causal"):
        stack(x, return_state=True)


def test_grid2d_needs_grid_and_matches_token_count():
    stack = make_stack(num_blocks=2, slstm_at=[], conv_mode="grid2d", conv_kernel_size=3, reverse_at=[1])
    x = torch.randn(2, 12, 32)
    assert stack(x, grid=(3, 4)).shape == (2, 12, 32)
    with pytest.raises(ValueError, match="grid"):
        stack(x)
    with pytest.raises(ValueError, match="holds 9 tokens"):
        stack(x, grid=(3, 3))


def test_gradients_reach_every_parameter():
    stack = make_stack(mlstm_block="pre_up").train()
    stack(torch.randn(2, 7, 32)).square().mean().backward()
    missing = [n for n, p in stack.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(embedding_dim=30, num_heads=4), "divisible by num_heads"),
        (dict(slstm_at=[5]), "indices must lie"),
        (dict(mlstm_block="middle"), "mlstm_block must be one of"),
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(backend="cuda"), "backend must be"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_config_errors(kw, message):
    base = dict(embedding_dim=32, num_blocks=3, num_heads=4)
    base.update(kw)
    with pytest.raises(ValueError, match=message):
        xLSTMBlockStackConfig(**base)


def test_input_shape_error():
    with pytest.raises(ValueError, match=r"expected input \(B, T, 32\)"):
        make_stack()(torch.randn(2, 5, 16))


@pytest.mark.parametrize("train", [True, False])
def test_fused_residual_norms_match_the_blocks(monkeypatch, train):
    """On the Triton backend a pre-up stack adds each block's output and applies the next LayerNorm in one op
    (xlstm_core/add_norm_triton.py), its reversed blocks by row order: the same output and gradients as the blocks'
    own adds, norms and flips. Training with DropPath (the same random draws), inference without."""
    from vision.vil import VisionLSTM
    from xlstm_core import add_norm_triton

    calls = []
    fused = add_norm_triton.add_norm
    monkeypatch.setattr(add_norm_triton, "add_norm", lambda *a, **k: calls.append(1) or fused(*a, **k))
    torch.manual_seed(0)
    model = VisionLSTM(img_size=32, patch_size=8, embed_dim=32, depth=3, num_classes=5, backend="triton",
                       drop_path_rate=0.5).train(train)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(4, 3, 32, 32)
    outputs, grads = [], []
    for fuse in (True, False):
        monkeypatch.setattr(xLSTMBlockStack, "_fuses_residual_norms", lambda self, x, fuse=fuse: fuse)
        torch.manual_seed(1)
        with torch.set_grad_enabled(train):
            y = model(x)
        outputs.append(y)
        if train:
            grads.append(torch.autograd.grad(y.square().sum(), list(model.parameters())))
    assert len(calls) == 4  # the first norm, then one per block
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-4, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_fused_residual_norms_only_where_the_op_applies():
    """Pre-up blocks with LayerNorms on the Triton backend take the fused op up to its widths; sLSTM (post-up)
    blocks, the PyTorch backend and wider streams keep the blocks' own adds and norms."""
    kw = dict(num_blocks=2, slstm_at=[], mlstm_block="pre_up", final_norm=True, backend="triton")
    x = torch.randn(1, 3, 32)
    assert make_stack(**kw)._fuses_residual_norms(x)
    assert not make_stack(**{**kw, "backend": "torch"})._fuses_residual_norms(x)
    assert not make_stack(**{**kw, "slstm_at": [1]})._fuses_residual_norms(x)
    assert not make_stack(**{**kw, "embedding_dim": 640, "num_heads": 4})._fuses_residual_norms(torch.randn(1, 3, 640))
