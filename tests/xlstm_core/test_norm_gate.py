"""Fused per-head norm + skip + SiLU gate (xlstm_core/norm_gate_triton.py) against the PyTorch reference.

On CPU the kernel runs under TRITON_INTERPRET=1 in fp32/fp16 against the reference in fp64: output and the
gradients of h, x_skip, z and the three parameters. x_skip is a channel-major view (the grid conv's layout) and z a
chunk of a wider tensor (the up-projection's), as in the layer. The `gpu` tests run bf16 at ViL's 196 tokens for
every row of the tile table, and under torch.compile.
"""
import dataclasses

import pytest
import torch

from tests.kernels.tolerances import assert_close
from xlstm_core import norm_gate
from xlstm_core.config import xLSTMBlockStackConfig
from xlstm_core.mlstm_layer import mLSTMPreUpLayer
from xlstm_core.norm_gate import norm_skip_gate, norm_skip_gate_reference

NAMES = ("h", "x_skip", "z", "weight", "skip", "bias")


def make_leaves(B, T, NH, DH, *, bias, dtype=torch.float32, device="cpu", seed=0):
    """h (B, T, NH, DH), x_skip storage (B, NH * DH, T), up-projection (B, T, 2 * NH * DH) holding z, and fp32
    weight, skip (and bias) of NH * DH features; all leaves."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    inner = NH * DH
    acts = [rand(B, T, NH, DH).to(dtype), rand(B, inner, T).to(dtype), rand(B, T, 2 * inner).to(dtype)]
    params = [1 + 0.5 * rand(inner), rand(inner)] + ([0.5 * rand(inner)] if bias else [])
    return [t.to(device).requires_grad_() for t in acts + params]


def run(fn, leaves, **kw):
    h, xs, up, weight, skip, *bias = leaves
    y = fn(h, xs.transpose(1, 2), up.chunk(2, dim=-1)[1], weight, bias[0] if bias else None, skip, **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device)
    return y, torch.autograd.grad((y.to(dy.dtype) * dy).sum(), leaves)


def check(leaves, dtype, factor=1.0):
    y, grads = run(norm_skip_gate, leaves, backend="triton")
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    y_ref, grads_ref = run(norm_skip_gate_reference, ref_leaves, eps=1e-6)
    assert y.dtype == leaves[0].dtype
    assert_close(y, y_ref, dtype, "y", factor)
    for name, a, b in zip(NAMES, grads, grads_ref):
        assert a.dtype == leaves[NAMES.index(name)].dtype, name
        assert_close(a, b, dtype, f"d{name}", factor)


@pytest.mark.parametrize("B,T,NH,DH,bias,dtype", [
    (2, 37, 3, 24, True, torch.float32),   # tokens over 3 backward blocks of 16, a head dim below its power of two
    (1, 1, 4, 16, False, torch.float32),   # one token (decoding)
    (1, 40, 2, 96, False, torch.float16),  # ViL-T's head dim: feature parts 64 + 32
    (1, 9, 2, 192, True, torch.float32),   # ViL-S's: parts 128 + 64, the second row of the tile table
    (1, 5, 1, 384, False, torch.float16),  # ViL-B's: parts 256 + 128, the third row
    (1, 3, 1, 512, True, torch.float32),   # an xLSTM-7B head: parts 256 + 256, the last row
])
def test_matches_reference(B, T, NH, DH, bias, dtype):
    check(make_leaves(B, T, NH, DH, bias=bias, dtype=dtype, seed=T), dtype)


@pytest.mark.parametrize("block,steps", [(8, 2), (4, 3), (16, 4)])
def test_backward_programs_of_several_token_blocks(monkeypatch, block, steps):
    """Backward programs that walk `steps` token blocks (sums of the parameter gradients over all of them), with a
    partial last block and, for 37 tokens, whole blocks past the sequence's end in the last program."""
    from xlstm_core import norm_gate_triton

    tiles = {"fwd": (8, 1), "bwd": (block, steps, 1)}
    monkeypatch.setattr(norm_gate_triton, "TILES", ((1 << 30, tiles),))
    check(make_leaves(2, 37, 2, 24, bias=True, seed=5), torch.float32)


def torch_and_triton_layers():
    """Two mLSTMPreUpLayers with the same parameters (non-trivial norm parameters, so that their gradients are not
    all alike), on the PyTorch and the Triton backend; and an input for them on a 3 x 4 token grid."""
    cfg = xLSTMBlockStackConfig(embedding_dim=32, num_heads=2, num_blocks=1, conv_mode="grid2d",
                                conv_kernel_size=3, cell_norm_bias=True, mlstm_form="parallel")
    torch.manual_seed(0)
    layers = [mLSTMPreUpLayer(cfg) for _ in range(2)]
    with torch.no_grad():
        layers[0].norm.weight.uniform_(0.5, 1.5)
        layers[0].norm_bias.uniform_(-0.5, 0.5)
        layers[0].skip.uniform_(0.5, 1.5)
    layers[1].load_state_dict(layers[0].state_dict())
    layers[1].cfg = dataclasses.replace(cfg, backend="triton")
    return layers, torch.randn(2, 12, 32)


def check_same_output_and_gradients(layers, run, atol):
    """run(layer) on both layers: equal outputs and parameter gradients (of the sum of squares of the output)."""
    results = []
    for layer in layers:
        y = run(layer)
        results.append((y, torch.autograd.grad(y.float().square().sum(), list(layer.parameters()))))
    (y_torch, g_torch), (y_triton, g_triton) = results
    assert_close(y_triton, y_torch, torch.float32, "y")
    for (name, _), a, b in zip(layers[0].named_parameters(), g_triton, g_torch):
        assert_close(a, b, torch.float32, name, atol=atol)


def test_layer_triton_matches_torch_backend():
    """mLSTMPreUpLayer gives the same output and parameter gradients with the fused chain as without."""
    layers, x = torch_and_triton_layers()
    check_same_output_and_gradients(layers, lambda layer: layer(x, grid=(3, 4)), atol=1e-7)


def test_compiled_training_saves_no_fp32_copies_of_the_layer_activations():
    """Under torch.compile the chain runs as a checkpointed region, so the backward recomputes it from the layer's
    bf16 h, x_skip and z. Left to inductor's partitioner (same one as `aot_eager_decomp_partition`), the fp32
    pre-gate value and an fp32 copy of z were saved instead: 8 bytes per (token, feature) more per layer."""
    cfg = xLSTMBlockStackConfig(embedding_dim=32, num_heads=2, num_blocks=1, conv_mode="grid2d",
                                conv_kernel_size=3, mlstm_form="parallel")
    torch.manual_seed(0)
    layer = mLSTMPreUpLayer(cfg)
    x = torch.randn(2, 12, 32, requires_grad=True)
    compiled = torch.compile(lambda t: layer(t, grid=(3, 4)), backend="aot_eager_decomp_partition", fullgraph=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        y = compiled(x)
    inner = 2 * 12 * cfg.inner_dim
    assert not [tuple(t.shape) for t in saved if t.dtype == torch.float32 and t.numel() == inner]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_eager = layer(x, grid=(3, 4))
    grads = [torch.autograd.grad(out.float().square().sum(), [x, *layer.parameters()]) for out in (y, y_eager)]
    assert_close(y.float(), y_eager.float(), torch.bfloat16, "y")
    for a, b in zip(*grads):
        assert_close(a, b, torch.bfloat16, "grad")


def test_compiled_triton_layer_traces_whole_and_matches_the_torch_backend():
    """On the Triton backend, torch.compile traces the layer without graph breaks (fullgraph): the fused parallel
    cell as a custom op, the norm-gate chain's forward as traced ops with the fused Triton backward. Output and
    parameter gradients equal the PyTorch backend's."""
    layers, x = torch_and_triton_layers()

    def compiled(layer):
        return torch.compile(lambda t: layer(t, grid=(3, 4)), backend="aot_eager_decomp_partition", fullgraph=True)(x)

    check_same_output_and_gradients(layers, compiled, atol=1e-6)


def test_compiled_inference_runs_the_triton_op_and_compiled_training_the_traced_chain():
    """Traced without a gradient the chain is the opaque Triton op (one kernel, where inductor formed two); traced
    for training it stays traced ops for inductor to fuse. The compiled inference output equals the eager one."""
    layers, x = torch_and_triton_layers()
    layer = layers[1]

    def graph_ops(grad: bool):
        ops = []

        def recording_backend(gm, example_inputs):
            ops.extend(str(node.target) for node in gm.graph.nodes)
            return gm.forward

        with torch.set_grad_enabled(grad):
            y = torch.compile(lambda t: layer(t, grid=(3, 4)), backend=recording_backend, fullgraph=True)(x)
        return ops, y

    inference_ops, y = graph_ops(grad=False)
    assert any("norm_skip_gate_fwd" in op for op in inference_ops)
    with torch.no_grad():
        assert_close(y, layer(x, grid=(3, 4)), torch.float32, "y")
    training_ops, _ = graph_ops(grad=True)
    assert not any("norm_skip_gate_fwd" in op for op in training_ops)


def test_rejects_mismatched_shapes():
    h, xs, up, weight, skip = make_leaves(1, 4, 2, 8, bias=False)
    with pytest.raises(ValueError, match="x_skip, z"):
        norm_skip_gate(h, xs.transpose(1, 2)[:, :3], up.chunk(2, -1)[1], weight, None, skip)
    with pytest.raises(ValueError, match="skip must have shape"):
        norm_skip_gate(h, xs.transpose(1, 2), up.chunk(2, -1)[1], weight, None, skip[:3])
    with pytest.raises(ValueError, match="fp16/bf16/fp32"):
        norm_skip_gate(h.double(), xs.transpose(1, 2).double(), up.chunk(2, -1)[1].double(), weight, None, skip,
                       backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("DH", [96, 64, 128, 192, 256, 384, 512])
def test_gpu_bf16_vil_shape(DH):
    """The chain at ViL's 196 tokens in bf16 against the fp64 reference, at ViL-T/S/B's heads (96, 192, 384: the
    swept rows of the tile table) and at the widths that take a row without a sweep (64, 128, 256, 512)."""
    check(make_leaves(8, 196, 4, DH, bias=DH % 192 == 96, dtype=torch.bfloat16, device="cuda"), torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("use_triton", [True, False])
def test_gpu_under_torch_compile(monkeypatch, use_triton):
    """Compiled, the chain is either the opaque fused op (no graph break) or inductor's fusion of the reference."""
    monkeypatch.setattr(norm_gate, "COMPILED_USES_TRITON", use_triton)
    leaves = make_leaves(4, 196, 4, 96, bias=False, dtype=torch.bfloat16, device="cuda", seed=3)
    compiled = torch.compile(norm_skip_gate, fullgraph=True)
    y, grads = run(compiled, leaves, backend="triton")
    y_eager, grads_eager = run(norm_skip_gate, leaves, backend="triton")
    assert_close(y.to(y_eager.dtype), y_eager, torch.bfloat16, "y", 0.5)
    for name, a, b in zip(NAMES, grads, grads_eager):
        assert_close(a, b, torch.bfloat16, f"d{name}", 0.5)
