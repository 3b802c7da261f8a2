"""The packed parallel cell with the norm-gate chain as its epilogue (xlstm_core/cell_gate_triton.py) against the
composed PyTorch reference (the packed mLSTM's reference backend, then the reference chain) in fp64.

On CPU the kernel runs under TRITON_INTERPRET=1 (row tiles of 32, heads up to 64) in fp32 / fp16; x_skip is a
channel-major view (the grid conv's layout) and z a chunk of a wider tensor (the up-projection's), as in the layer.
The `gpu` test runs bf16 at ViL-T's heads (the widest the op takes) and also checks which heads it takes.
"""
import pytest
import torch

from kernels import mlstm_packed
from tests.kernels.tolerances import assert_close, rel_err
from xlstm_core.cell_gate_triton import fuses, mlstm_packed_norm_gate
from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.mlstm_layer import mLSTMPreUpLayer
from xlstm_core.norm_gate import norm_skip_gate, norm_skip_gate_reference


def inputs(B, S, NH, DH, *, bias=True, dtype=torch.float32, device="cpu", seed=0):
    """qk [q | k | gate shares | 8 padding], v [v | gate shares | 8 padding], x_skip (channel-major), z (the second
    half of an up-projection), weight, bias, skip. Gate pre-activations as ViL's at initialisation (input gates near
    0, forget gates near 3)."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    inner = NH * DH
    qk, v = rand(B, S, 2 * inner + 2 * NH + 8), rand(B, S, inner + 2 * NH + 8)
    qk[..., 2 * inner : 2 * inner + 2 * NH] = 0.3 * rand(B, S, 2 * NH) + torch.tensor([0.0] * NH + [1.5] * NH)
    v[..., inner : inner + 2 * NH] = 0.3 * rand(B, S, 2 * NH) + torch.tensor([0.0] * NH + [1.5] * NH)
    x_skip = rand(B, inner, S).to(device, dtype).transpose(1, 2)
    z = rand(B, S, 2 * inner).to(device, dtype)[..., inner:]
    params = [1 + 0.3 * rand(inner), 0.2 * rand(inner) if bias else None, 1 + 0.3 * rand(inner)]
    return (qk.to(device, dtype), v.to(device, dtype), x_skip, z, *(p if p is None else p.to(device) for p in params))


def composed(qk, v, x_skip, z, weight, bias, skip, num_heads, variant):
    DH = x_skip.shape[-1] // num_heads
    h = mlstm_packed(qk, v, num_heads=num_heads, head_dim_qk=DH, head_dim_v=DH, variant=variant, backend="torch")
    return norm_skip_gate_reference(h, x_skip, z, weight, bias, skip, 1e-6)


def double(tensors):
    return [None if t is None else t.double() for t in tensors]


@pytest.mark.parametrize("B, S, NH, DH, variant, bias, dtype", [
    (2, 37, 2, 24, "exp", True, torch.float32),   # two row tiles, the first partial; parts 16 + 16 over 24 features
    (1, 70, 1, 48, "sig", False, torch.float16),  # three row tiles; parts 32 + 16
    (2, 9, 3, 16, "exp", False, torch.float32),   # one partial tile
    (1, 64, 2, 64, "sig", True, torch.float32),   # whole tiles; the widest head the interpreter's kernels take
])
def test_matches_the_composed_reference(B, S, NH, DH, variant, bias, dtype):
    t = inputs(B, S, NH, DH, bias=bias, dtype=dtype, seed=S)
    with torch.no_grad():
        y = mlstm_packed_norm_gate(*t, num_heads=NH, variant=variant)
    assert y.dtype == dtype and y.shape == (B, S, NH * DH)
    assert_close(y, composed(*double(t), NH, variant), dtype, "y")


def test_rejects_what_it_does_not_compute():
    t = inputs(1, 8, 2, 16)
    with pytest.raises(RuntimeError, match="no gradients"):
        mlstm_packed_norm_gate(t[0].requires_grad_(), *t[1:], num_heads=2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="fuses"):
            mlstm_packed_norm_gate(*inputs(1, 8, 1, 80), num_heads=1)  # wider than the interpreter's 64
        with pytest.raises(ValueError, match="one \\(B, S\\)"):
            mlstm_packed_norm_gate(t[0][:, :4], *t[1:], num_heads=2)


def test_layer_inference_takes_it_and_matches_the_separate_ops(monkeypatch):
    """A packed pre-up layer on Triton without autograd runs the fused kernel; with it switched off, the separate
    cell and chain, and both agree."""
    from xlstm_core import cell_gate_triton

    cfg = xLSTMBlockStackConfig(embedding_dim=32, num_heads=2, dense_qkv=True, mlstm_form="parallel",
                                backend="triton", bias=True, cell_norm_bias=True)
    torch.manual_seed(0)
    layer = mLSTMPreUpLayer(cfg)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 21, 32)
    calls = []
    fused_op = cell_gate_triton.mlstm_packed_norm_gate
    monkeypatch.setattr(cell_gate_triton, "mlstm_packed_norm_gate",
                        lambda *a, **k: calls.append(1) or fused_op(*a, **k))
    with torch.no_grad():
        y = layer(x)
        monkeypatch.setattr(mLSTMPreUpLayer, "_takes_fused_cell_gate", lambda self, qk: False)
        y_sep = layer(x)
    assert calls == [1]
    torch.testing.assert_close(y, y_sep, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("batch, head_dim", [(32, 96), (8, 128), (4, 64)])
def test_gpu_bf16_at_vil_t_heads(variant, batch, head_dim):
    """bf16 at 196 tokens and 4 heads up to the widest the op takes (ViL-T's 96, 128; 64): at most as far from fp64
    as the separate Triton ops (1.5x for rounding) or within 1e-2. Wider heads (ViL-S's, ViL-B's) keep the separate
    ops."""
    assert fuses(128, 196) and not fuses(192, 196) and not fuses(96, 257)
    NH = 4
    t = inputs(batch, 196, NH, head_dim, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        y = mlstm_packed_norm_gate(*t, num_heads=NH, variant=variant)
        h = mlstm_packed(t[0], t[1], num_heads=NH, head_dim_qk=head_dim, head_dim_v=head_dim, variant=variant,
                         backend="triton")
        y_sep = norm_skip_gate(h, *t[2:], backend="triton")
    y_ref = composed(*double(t), NH, variant)
    assert rel_err(y, y_ref) <= max(1.5 * rel_err(y_sep, y_ref), 1e-2), (rel_err(y, y_ref), rel_err(y_sep, y_ref))
