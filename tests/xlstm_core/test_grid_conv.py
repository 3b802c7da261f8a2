"""Depthwise grid conv + SiLU in Triton (xlstm_core/grid_conv_triton.py: the fused inference pass, and the 3 x 3
conv with its backward for training) against PyTorch's conv2d + SiLU.

On CPU the kernel runs under TRITON_INTERPRET=1 in fp32/fp16 against the reference in fp64. x is a chunk of a wider
tensor (the up-projection's layout in the layer); grids are not square, token and channel counts not multiples of
the tiles. With a gradient to compute, `conv_silu` runs the Triton conv and its backward for 3 x 3 kernels and
PyTorch's conv for other sizes. The `gpu` tests run bf16 at ViL-T's shape and under torch.compile.
"""
import pytest
import torch

from tests.kernels.tolerances import assert_close
from xlstm_core.conv import GridConv2d

NAMES = ("x", "weight", "bias")


def make(B, grid, D, K, *, dtype=torch.float32, device="cpu", seed=0):
    """A GridConv2d with random weights and bias, and an up-projection-like (B, T, 2 D) tensor whose second half is
    the conv's input."""
    torch.manual_seed(seed)
    conv = GridConv2d(D, K)
    with torch.no_grad():
        conv.conv.bias.normal_()
    up = torch.randn(B, grid[0] * grid[1], 2 * D).to(dtype).to(device)
    return conv.to(device), up


def reference(conv, up, grid):
    """silu(conv2d) in fp64 with conv's parameters."""
    ref = GridConv2d(conv.conv.in_channels, conv.conv.kernel_size[0]).double().to(up.device)
    ref.load_state_dict(conv.state_dict())
    with torch.no_grad():
        return ref.conv_silu(up.double().chunk(2, dim=-1)[1], grid, backend="torch")


def check(B, grid, D, K, dtype, device="cpu", factor=1.0):
    conv, up = make(B, grid, D, K, dtype=dtype, device=device)
    with torch.no_grad():
        y = conv.conv_silu(up.chunk(2, dim=-1)[1], grid, backend="triton")
    assert y.dtype == dtype and y.shape == (B, grid[0] * grid[1], D) and y.is_contiguous()
    assert_close(y, reference(conv, up, grid), dtype, "y", factor)


@pytest.mark.parametrize("B,grid,D,K",
                         [(2, (5, 7), 40, 3), (1, (14, 14), 72, 3), (2, (3, 4), 16, 5), (1, (1, 9), 8, 3)])
def test_matches_conv2d_silu(B, grid, D, K):
    check(B, grid, D, K, torch.float32)


def test_fp16():
    check(2, (6, 5), 24, 3, torch.float16)


def test_border_taps_see_zeros_not_neighbours():
    """A single nonzero input on the grid's right edge reaches only its own 3x3 neighbourhood, not the next row's
    first column (a flattened-index shift would wrap there)."""
    conv, _ = make(1, (4, 4), 8, 3)
    with torch.no_grad():
        conv.conv.weight.fill_(1.0)
        conv.conv.bias.zero_()
    x = torch.zeros(1, 16, 8)
    x[0, 7] = 1.0  # row 1, column 3
    y = conv.conv_silu(x, (4, 4), backend="triton")
    touched = {t for t in range(16) if y[0, t].abs().sum() > 0}
    assert touched == {2, 3, 6, 7, 10, 11}


def training_grads(conv, up, grid, backend, dtype=torch.float64):
    """silu(conv) of the up-projection-like tensor's second half and the gradients of the sum of its squares with
    respect to that whole tensor, the weight and the bias, computed in `dtype`."""
    run = GridConv2d(conv.conv.in_channels, conv.conv.kernel_size[0]).to(device=up.device, dtype=dtype)
    run.load_state_dict(conv.state_dict())
    leaf = up.detach().to(dtype).requires_grad_()
    y = run.conv_silu(leaf.chunk(2, dim=-1)[1], grid, backend=backend)
    return y, torch.autograd.grad(y.square().sum(), (leaf, run.conv.weight, run.conv.bias))


def check_training(B, grid, D, K, dtype, device="cpu", factor=1.0):
    """`training_grads` on the Triton backend in `dtype` against the PyTorch backend in fp64: output and gradients."""
    conv, up = make(B, grid, D, K, dtype=dtype, device=device)
    y, grads = training_grads(conv, up, grid, "triton", dtype)
    y_ref, grads_ref = training_grads(conv, up, grid, "torch")
    assert_close(y, y_ref, dtype, "y")
    for name, a, b in zip(NAMES, grads, grads_ref):
        assert_close(a, b, dtype, f"d{name}", factor)


@pytest.mark.parametrize("B,grid,D", [(2, (5, 7), 40), (1, (14, 14), 72), (3, (1, 9), 8), (2, (9, 2), 136),
                                     (1, (8, 16), 392)])
def test_training_conv_and_its_backward_match_pytorch(B, grid, D):
    """The Triton training path (3 x 3): output and the gradients of the strided input, the weight and the bias
    against PyTorch's conv in fp64; channel counts over one weight-gradient tile and token counts over several, and
    one over WIDE_WGRAD_CHANNELS (the weight sums' other split target)."""
    check_training(B, grid, D, 3, torch.float32)


def test_training_conv_fp16():
    check_training(2, (6, 5), 24, 3, torch.float16)


def test_training_with_other_kernel_sizes_runs_pytorch_conv(monkeypatch):
    """The Triton training conv takes 3 x 3 kernels; a 5 x 5 conv trains on PyTorch's conv, with its gradients."""
    from xlstm_core import grid_conv_triton

    monkeypatch.setattr(grid_conv_triton, "grid_conv_triton", lambda *a: pytest.fail("Triton conv for 5 x 5"))
    check_training(2, (4, 6), 16, 5, torch.float32)


def test_training_conv_refuses_other_kernel_sizes():
    from xlstm_core.grid_conv_triton import grid_conv_triton

    conv, up = make(1, (3, 3), 8, 5)
    with pytest.raises(ValueError, match="3 x 3"):
        grid_conv_triton(up[..., :8], conv.conv.weight, conv.conv.bias, (3, 3))


def test_bad_grid_is_refused():
    conv, up = make(1, (3, 3), 8, 3)
    with pytest.raises(ValueError, match="grid"):
        conv.conv_silu(up.chunk(2, dim=-1)[1], (2, 5), backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_vil_tiny_shape(dtype):
    check(8, (14, 14), 384, 3, dtype, device="cuda")


@pytest.mark.gpu
def test_gpu_training_vil_tiny_shape():
    """bf16 at ViL-T's layer shape: the Triton training conv's output and gradients against PyTorch's in fp64."""
    check_training(8, (14, 14), 384, 3, torch.bfloat16, device="cuda", factor=4.0)


@pytest.mark.gpu
def test_gpu_compiled_training_matches_eager():
    conv, up = make(4, (14, 14), 384, 3, dtype=torch.bfloat16, device="cuda")
    conv = conv.to(torch.bfloat16)
    x = up.chunk(2, dim=-1)[1]

    def step(fn):
        leaf = x.detach().requires_grad_()
        y = fn(leaf)
        return (y, *torch.autograd.grad(y.float().square().sum(), (leaf, conv.conv.weight, conv.conv.bias)))

    fn = lambda u: conv.conv_silu(u, (14, 14), backend="triton")
    for a, b in zip(step(torch.compile(fn)), step(fn)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
def test_gpu_torch_compile_matches_eager():
    conv, up = make(4, (14, 14), 384, 3, dtype=torch.bfloat16, device="cuda")
    fn = lambda u: conv.conv_silu(u.chunk(2, dim=-1)[1], (14, 14), backend="triton")
    with torch.inference_mode():
        assert torch.equal(torch.compile(fn)(up), fn(up))


def test_training_path_hands_cudnn_a_dense_channels_last_input():
    """The conv's input is the strided half of the up-projection; PyTorch's conv gets it as a dense channels-last
    tensor (one copy here), not strided (which made cuDNN's forward and backward each copy it), and the result and
    gradients stay those of the strided input."""
    conv, up = make(2, (3, 5), 8, 3)
    seen = []
    conv.conv.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    x = up.chunk(2, dim=-1)[1].requires_grad_()
    y = conv(x, (3, 5))
    assert seen[0].is_contiguous(memory_format=torch.channels_last) and seen[0].shape == (2, 8, 3, 5)
    (grad,) = torch.autograd.grad(y.square().sum(), x)
    dense = x.detach().contiguous().requires_grad_()
    y_dense = conv(dense, (3, 5))
    torch.testing.assert_close(y, y_dense)
    torch.testing.assert_close(grad, torch.autograd.grad(y_dense.square().sum(), dense)[0])
