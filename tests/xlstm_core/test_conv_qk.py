"""The grid conv + SiLU + block-diagonal q/k projection in one Triton kernel (xlstm_core/conv_qk_triton.py), forward
and backward, against PyTorch's conv2d, SiLU and F.linear with the block-diagonal part of the weight, in fp64.

On CPU the kernels run under TRITON_INTERPRET=1 in fp32/fp16. x is a column slice of a wider tensor (the
up-projection's layout), w_qk a transposed view (the folded weight's layout) that is dense: the kernels must read
only q's and k's diagonal blocks. Grids are not square; token, channel and gate counts are not multiples of the
tiles. The `gpu` test runs bf16 at ViL-T's shape.
"""
import pytest
import torch
import torch.nn.functional as F

from tests.kernels.tolerances import assert_close
from xlstm_core import conv_qk_triton as cq
from xlstm_core.conv_qk_triton import conv_qk, conv_qk_backward, grid_conv_qk_triton
from xlstm_core.grid_conv_triton import _dgrad_into, _token_splits

NAMES = ("x", "conv_weight", "conv_bias", "w_qk", "b_qk")


def block_mask(width: int, inner: int, block: int) -> torch.Tensor:
    blocks = torch.arange(inner) // block
    mask = torch.ones(width, inner, dtype=torch.float64)
    mask[: 2 * inner] = (blocks[:, None] == blocks[None, :]).double().repeat(2, 1)
    return mask


def inputs(B, grid, D, K, gates, block, *, dtype=torch.float32, device="cpu", seed=0):
    """x as the middle third of a (B, T, 3 D) tensor, the conv's parameters, and w_qk (2 D + gates + 8 padding rows,
    D) stored as the transpose of an (in, out) matrix, dense."""
    torch.manual_seed(seed)
    width = 2 * D + gates + 8
    w_qk = torch.randn(D, width) / block**0.5
    w_qk[:, 2 * D :] *= (block / D) ** 0.5
    w_qk[:, 2 * D + gates :] = 0.0
    t = {"x": torch.randn(B, grid[0] * grid[1], 3 * D)[..., D : 2 * D], "conv_weight": 0.3 * torch.randn(D, 1, K, K),
         "conv_bias": 0.3 * torch.randn(D), "w_qk": w_qk.t(), "b_qk": 0.3 * torch.randn(width)}
    return {k: v.to(device, dtype) for k, v in t.items()}


def pre_activation(t, grid):
    """The depthwise conv's output u (B, T, D) on the token grid, in t's dtype (PyTorch's conv2d)."""
    B, T, D = t["x"].shape
    K = t["conv_weight"].shape[-1]
    image = t["x"].transpose(1, 2).reshape(B, D, *grid)
    u = F.conv2d(image, t["conv_weight"], t["conv_bias"], padding=K // 2, groups=D)
    return u.flatten(2).transpose(1, 2)


def reference(t, grid, block):
    """x_conv and qk in fp64, differentiable in every input (and the reference dict of inputs)."""
    r = {k: v.detach().double().requires_grad_() for k, v in t.items()}
    D = r["x"].shape[-1]
    x_conv = F.silu(pre_activation(r, grid))
    mask = block_mask(r["w_qk"].shape[0], D, block).to(x_conv.device)
    return r, x_conv, F.linear(x_conv, r["w_qk"] * mask, r["b_qk"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid, D, K, gates", [((3, 5), 40, 3, 4), ((6, 7), 128, 3, 8), ((4, 5), 72, 5, 2)])
def test_forward_matches_reference(grid, D, K, gates, dtype):
    t = inputs(2, grid, D, K, gates, 4, dtype=dtype)
    _, x_conv_ref, qk_ref = reference(t, grid, 4)
    with torch.no_grad():
        x_conv, qk = grid_conv_qk_triton(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], grid, 4)
    assert x_conv.dtype == qk.dtype == dtype
    assert_close(x_conv, x_conv_ref, dtype, "x_conv")
    assert_close(qk, qk_ref, dtype, "qk")


def training_forward(t, grid, block):
    """`conv_qk` as the mixer runs it in training: x_conv, qk and the stored silu'(u)."""
    silu_grad = t["x"].new_empty(t["x"].shape)
    x_conv, qk = conv_qk(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], *grid, block, silu_grad)
    return x_conv, qk, silu_grad


def silu_grad_reference(t, grid):
    """silu'(u) = s (1 + u (1 - s)), s = sigmoid(u), of the conv's pre-activation u, in fp64."""
    u = pre_activation({k: v.double() for k, v in t.items()}, grid)
    s = torch.sigmoid(u)
    return s * (1 + u * (1 - s))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid, D, K", [((3, 5), 40, 3), ((4, 5), 72, 5)])
def test_training_forward_stores_the_silu_gradient(grid, D, K, dtype):
    """With a silu_grad buffer the kernel also writes silu'(u) and computes the same x_conv and qk."""
    t = inputs(2, grid, D, K, 4, 4, dtype=dtype)
    _, x_conv_ref, qk_ref = reference(t, grid, 4)
    x_conv, qk, silu_grad = training_forward(t, grid, 4)
    assert_close(x_conv, x_conv_ref, dtype, "x_conv")
    assert_close(qk, qk_ref, dtype, "qk")
    assert_close(silu_grad, silu_grad_reference(t, grid), dtype, "silu'(u)")


def test_training_forward_rejects_a_wrong_silu_gradient_buffer():
    t = inputs(1, (3, 3), 48, 3, 4, 4)
    for bad in (torch.empty(1, 9, 40), torch.empty(1, 9, 48, dtype=torch.float16), torch.empty(1, 48, 9).mT):
        with pytest.raises(ValueError, match="silu_grad must be a dense"):
            conv_qk(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], 3, 3, 4, bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("grid, D, gates, block", [((3, 5), 40, 4, 4), ((6, 7), 128, 8, 4), ((2, 9), 64, 6, 8)])
def test_backward_matches_autograd(grid, D, gates, block, dtype):
    """du taken through the conv's input gradient (the mixer's next kernel) to dx, and every parameter gradient; the
    gradient of w_qk is zero outside q's and k's blocks, as the reference's (whose function masks them)."""
    t = inputs(2, grid, D, 3, gates, block, dtype=dtype)
    r, x_conv_ref, qk_ref = reference(t, grid, block)
    torch.manual_seed(1)
    d_qk = torch.randn_like(qk_ref)
    d_qk[..., 2 * D + gates :] = 0.0  # the cell's backward writes zeros into the padding columns
    d_x_conv = torch.randn_like(x_conv_ref)
    want = torch.autograd.grad((x_conv_ref, qk_ref), [r[n] for n in NAMES], (d_x_conv, d_qk))
    x_conv, _, silu_grad = training_forward(t, grid, block)
    du, d_conv_w, d_conv_b, d_w_qk, d_b_qk = conv_qk_backward(
        t["x"], t["conv_weight"], t["w_qk"], x_conv, silu_grad, d_qk.to(dtype), d_x_conv.to(dtype), *grid, block)
    dx = torch.empty_like(t["x"])
    _dgrad_into(du, t["conv_weight"], *grid, dx)
    assert du.dtype == dtype and d_w_qk.dtype == torch.float32
    for name, got, expected in zip(NAMES, (dx, d_conv_w, d_conv_b, d_w_qk, d_b_qk), want):
        assert_close(got, expected, dtype, f"d {name}")
    outside = block_mask(d_w_qk.shape[0], D, block) == 0
    assert d_w_qk[outside].abs().max() == 0


@pytest.mark.parametrize("tiles, per_sm, splits", [((8, 32, 1), 4, 5), ((16, 64, 2), 2, 2), ((64, 32, 1), 4, 1)])
def test_projection_gradients_over_token_ranges(monkeypatch, tiles, per_sm, splits):
    """The projection gradients' partial sums per token range and channel block, reduced over the ranges: tiles and
    splits the weight-gradient sweep (benchmarks/conv_qk_wgrad_tiles.py) tries, with a partial last range and a
    partial channel block (D = 40 on 32-channel programs), against the dense product in fp64."""
    monkeypatch.setattr(cq, "WGRAD_TILES", tiles)
    monkeypatch.setattr(cq, "WGRAD_PROGRAMS_PER_SM", per_sm)
    B, T, D, gates, block = 4, 42, 40, 6, 4
    width = 2 * D + gates + 8
    assert _token_splits(-(-D // tiles[1]), B * T, tiles[0], torch.device("cpu"), per_sm, min_blocks=4) == splits
    torch.manual_seed(0)
    d_qk, x_conv = torch.randn(B, T, width), torch.randn(B, T, D)
    d_qk[..., 2 * D + gates :] = 0.0
    d_w_qk, d_b_qk = cq._projection_grads(d_qk, x_conv, block)
    want = d_qk.double().flatten(0, 1).T @ x_conv.double().flatten(0, 1) * block_mask(width, D, block)
    assert_close(d_w_qk, want, torch.float32, "d w_qk")
    assert_close(d_b_qk, d_qk.double().sum((0, 1)), torch.float32, "d b_qk")


def test_rejects_blocks_that_do_not_fit_the_tiles():
    t = inputs(1, (3, 3), 48, 3, 4, 4)
    with pytest.raises(ValueError, match="block size 3"):
        grid_conv_qk_triton(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], (3, 3), 3)
    with pytest.raises(ValueError, match="96 rows"):
        grid_conv_qk_triton(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"][:90], t["b_qk"][:90], (3, 3), 4)
    t5 = inputs(1, (3, 3), 48, 5, 4, 4)
    x_conv, qk, silu_grad = training_forward(t5, (3, 3), 4)
    with pytest.raises(ValueError, match="3 x 3"):  # the backward's tap sums are 3 x 3
        conv_qk_backward(t5["x"], t5["conv_weight"], t5["w_qk"], x_conv, silu_grad, qk, x_conv, 3, 3, 4)


def test_layer_inference_takes_the_fused_conv(monkeypatch):
    """Without a gradient the packed ViL layer on Triton gets x_conv and [q | k | gate shares] from the fused kernel
    and computes what the PyTorch backend computes."""
    from vision.vil import VisionLSTM
    from xlstm_core import conv_qk_triton

    calls = []
    fused = conv_qk_triton.grid_conv_qk_triton
    monkeypatch.setattr(conv_qk_triton, "grid_conv_qk_triton", lambda *a: calls.append(1) or fused(*a))
    torch.manual_seed(0)
    model = VisionLSTM(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5, backend="triton").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn_like(p))
    reference_model = VisionLSTM(img_size=32, patch_size=8, embed_dim=32, depth=2, num_classes=5, backend="torch")
    reference_model.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got, want = model(x), reference_model.eval()(x)
    assert len(calls) == 2
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
def test_gpu_bf16_at_vil_tiny_shape():
    """bf16 at ViL-T's shape (14 x 14 tokens, 384 channels, 4 x 4 blocks, 8 gate shares): forward and every gradient
    within the bf16 tolerance of fp64."""
    grid, D, dtype = (14, 14), 384, torch.bfloat16
    t = inputs(64, grid, D, 3, 8, 4, dtype=dtype, device="cuda")
    r, x_conv_ref, qk_ref = reference(t, grid, 4)
    with torch.no_grad():
        x_conv, qk = grid_conv_qk_triton(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], grid, 4)
    assert_close(x_conv, x_conv_ref, dtype, "x_conv")
    assert_close(qk, qk_ref, dtype, "qk")
    silu_grad = torch.empty_like(x_conv)
    conv_qk(t["x"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], *grid, 4, silu_grad)
    assert_close(silu_grad, silu_grad_reference(t, grid), dtype, "silu'(u)")
    d_qk, d_x_conv = torch.randn_like(qk_ref), torch.randn_like(x_conv_ref)
    d_qk[..., 2 * D + 8 :] = 0.0
    want = torch.autograd.grad((x_conv_ref, qk_ref), [r[n] for n in NAMES], (d_x_conv, d_qk))
    du, *grads = conv_qk_backward(t["x"], t["conv_weight"], t["w_qk"], x_conv, silu_grad, d_qk.to(dtype),
                                  d_x_conv.to(dtype), *grid, 4)
    dx = torch.empty_like(t["x"])
    _dgrad_into(du, t["conv_weight"], *grid, dx)
    for name, got, expected in zip(NAMES, (dx, *grads), want):
        assert_close(got, expected, dtype, f"d {name}")
