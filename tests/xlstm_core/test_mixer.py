"""The pre-up layer's middle as one Triton op in training (xlstm_core/mixer_triton.py) against the same computation
composed of PyTorch's reference ops in fp64: the output and the gradients of the up-projection's output (its
padding columns included) and of every parameter.

On CPU the kernels run under TRITON_INTERPRET=1 in fp32. Grids are not square and token counts not multiples of
the tiles; the `gpu` test runs bf16 at ViL-T's shape. The layer-level equalities (the layer in training on Triton
against the literal block-diagonal layer, compiled against eager) are in tests/vision/test_model.py.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import mlstm_packed
from tests.kernels.tolerances import assert_close, rel_err
from xlstm_core.mixer_triton import mixer_triton
from xlstm_core.norm_gate import norm_skip_gate_reference

NAMES = ("up", "conv_weight", "conv_bias", "w_qk", "b_qk", "norm_weight", "norm_bias", "skip")
BLOCK = 4  # ViL's q / k block size


def block_mask(w_qk: torch.Tensor, inner: int) -> torch.Tensor:
    """1 where the op reads w_qk: q's and k's diagonal blocks and the gate-share rows; 0 elsewhere."""
    blocks = torch.arange(inner, device=w_qk.device) // BLOCK
    mask = torch.ones_like(w_qk)
    mask[: 2 * inner] = (blocks[:, None] == blocks[None, :]).to(w_qk.dtype).repeat(2, 1)
    return mask


def inputs(B, grid, num_heads, head_dim, *, norm_bias=True, pad=16, dtype=torch.float32, device="cpu", seed=0):
    """up (B, T, 2 inner + v_width + pad) = [x_inner | z | v | gate shares | v padding | pad] and the parameters.
    The gate pre-activations (each the sum of a share from qk and one from up) are ViL's at initialisation: input
    gates near 0, forget gates near 3 (with gate shares of unit scale, half-precision gradients of either path lose
    1-2% to cancellation already at 42 tokens). Returns (tensors dict, v_width)."""
    torch.manual_seed(seed)
    inner, T, NH = num_heads * head_dim, grid[0] * grid[1], num_heads
    v_width = inner + 2 * NH + 8  # v, its gate shares, 8 padding columns (zero weights in the layer)
    qk_width = 2 * inner + 2 * NH + 8
    up = torch.randn(B, T, 2 * inner + v_width + pad)
    gates = slice(3 * inner, 3 * inner + 2 * NH)
    up[..., gates] = 0.3 * torch.randn(B, T, 2 * NH) + torch.tensor([0.0] * NH + [1.5] * NH)
    w_qk = torch.randn(qk_width, inner) / BLOCK**0.5  # dense: the op must not read outside q's and k's blocks
    w_qk[2 * inner :] *= 0.05 * (BLOCK / inner) ** 0.5  # the gate shares of q and k
    w_qk[-8:] = 0.0  # the folded projection's padding rows
    b_qk = 0.1 * torch.randn(qk_width)
    b_qk[2 * inner + NH : 2 * inner + 2 * NH] += 1.5
    tensors = {"up": up, "conv_weight": 0.3 * torch.randn(inner, 1, 3, 3), "conv_bias": 0.1 * torch.randn(inner),
               "w_qk": w_qk, "b_qk": b_qk, "norm_weight": 1 + 0.1 * torch.randn(inner),
               "norm_bias": 0.1 * torch.randn(inner) if norm_bias else None, "skip": 1 + 0.1 * torch.randn(inner)}
    return {k: None if t is None else t.to(device, dtype).requires_grad_() for k, t in tensors.items()}, v_width


def composed(t, grid, num_heads, v_width, variant, eps=1e-6):
    """The op's function from PyTorch's ops: the conv on an image grid, the block-diagonal part of w_qk, the packed
    mLSTM's reference backend and the reference norm-gate chain."""
    inner = t["conv_weight"].shape[0]
    up = t["up"]
    x_inner, z, v = up[..., :inner], up[..., inner : 2 * inner], up[..., 2 * inner : 2 * inner + v_width]
    B, T, _ = up.shape
    image = x_inner.transpose(1, 2).reshape(B, inner, *grid)
    x_conv = F.silu(F.conv2d(image, t["conv_weight"], t["conv_bias"], padding=1, groups=inner))
    x_conv = x_conv.flatten(2).transpose(1, 2)
    qk = F.linear(x_conv, t["w_qk"] * block_mask(t["w_qk"], inner), t["b_qk"])
    h = mlstm_packed(qk, v, num_heads=num_heads, head_dim_qk=inner // num_heads, head_dim_v=inner // num_heads,
                     variant=variant, backend="torch")
    return norm_skip_gate_reference(h, x_conv, z, t["norm_weight"], t["norm_bias"], t["skip"], eps)


def check(B, grid, num_heads, head_dim, variant, norm_bias=True, dtype=torch.float32, device="cpu", factor=1.0):
    t, v_width = inputs(B, grid, num_heads, head_dim, norm_bias=norm_bias, dtype=dtype, device=device)
    ref = {k: None if x is None else x.detach().double().requires_grad_() for k, x in t.items()}
    y = mixer_triton(t["up"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], t["norm_weight"],
                     t["norm_bias"], t["skip"], grid, BLOCK, num_heads, v_width, variant, 1e-6)
    y_ref = composed(ref, grid, num_heads, v_width, variant)
    assert_close(y, y_ref, dtype, "y", factor)
    dy = torch.randn_like(y_ref)
    names = [n for n in NAMES if t[n] is not None]
    grads = torch.autograd.grad(y, [t[n] for n in names], dy.to(dtype))
    ref_grads = torch.autograd.grad(y_ref, [ref[n] for n in names], dy)
    for name, got, want in zip(names, grads, ref_grads):
        assert_close(got, want, dtype, f"d {name}", factor)
    inner = t["conv_weight"].shape[0]
    assert grads[0][..., 2 * inner + v_width :].abs().max() == 0  # the up-projection's padding columns


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("grid", [(3, 5), (6, 7)])
def test_mixer_matches_the_composed_reference(variant, grid):
    check(2, grid, 2, 16, variant)


def test_mixer_without_norm_bias():
    check(1, (4, 4), 2, 16, "exp", norm_bias=False)


def test_mixer_with_heads_wider_than_the_whole_head_kernels():
    """Heads wider than the cell's whole-head kernels take (over 384 features on a GPU, over 64 under the
    interpreter) run its sliced kernels."""
    check(1, (3, 4), 1, 80, "sig")


def test_mixer_backward_fills_no_zero_gradients_for_its_residuals():
    """Only y leaves `mixer_triton`; the op's other outputs are residuals for its backward. Eager autograd must not
    form zero gradients for them (eight tensors, four of them of x_conv's size or more). The one zeros call left
    is the q / k weight gradient's buffer."""
    from torch.profiler import ProfilerActivity, profile

    t, v_width = inputs(1, (3, 4), 2, 16)
    y = mixer_triton(t["up"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], t["norm_weight"],
                     t["norm_bias"], t["skip"], (3, 4), BLOCK, 2, v_width, "exp", 1e-6)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        y.sum().backward()
    assert sum(e.name == "aten::zeros" for e in prof.events()) <= 1


def test_mixer_rejects_other_conv_sizes():
    t, v_width = inputs(1, (3, 3), 2, 16)
    with pytest.raises(ValueError, match="3 x 3"):
        mixer_triton(t["up"], torch.randn(32, 1, 5, 5), t["conv_bias"], t["w_qk"], t["b_qk"], t["norm_weight"],
                     t["norm_bias"], t["skip"], (3, 3), BLOCK, 2, v_width, "exp", 1e-6)


def separate_ops(t, grid, num_heads, v_width, variant):
    """The path the op replaces: the Triton conv with inductor's / PyTorch's SiLU, the packed Triton cell and the
    Triton norm-gate chain, each with its own backward."""
    from xlstm_core.grid_conv_triton import grid_conv_triton
    from xlstm_core.norm_gate import norm_skip_gate

    inner = t["conv_weight"].shape[0]
    up = t["up"]
    x_inner, z, v = up[..., :inner], up[..., inner : 2 * inner], up[..., 2 * inner : 2 * inner + v_width]
    x_conv = F.silu(grid_conv_triton(x_inner, t["conv_weight"], t["conv_bias"], grid))
    qk = F.linear(x_conv, t["w_qk"] * block_mask(t["w_qk"], inner), t["b_qk"])
    h = mlstm_packed(qk, v, num_heads=num_heads, head_dim_qk=inner // num_heads, head_dim_v=inner // num_heads,
                     variant=variant, backend="triton")
    return norm_skip_gate(h, x_conv, z, t["norm_weight"], t["norm_bias"], t["skip"], backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("head_dim, batch", [(96, 32), (192, 16), (384, 8)])
def test_gpu_mixer_bf16_at_vil_shapes(variant, head_dim, batch):
    """bf16 at the shapes of ViL-T, ViL-S and ViL-B (heads of 96, 192 and 384: three rows of the cell's whole-head
    tile table): every gradient at most twice as far from fp64 as the separate ops' (or within the bf16 tolerance).
    Both lose ~1e-2 to the cell's backward at 196 tokens; a wrong column or term costs ~1."""
    grid, NH = (14, 14), 4
    t, v_width = inputs(batch, grid, NH, head_dim, dtype=torch.bfloat16, device="cuda")
    ref = {k: None if x is None else x.detach().double().requires_grad_() for k, x in t.items()}
    names = [n for n in NAMES if t[n] is not None]
    dy = torch.randn(batch, grid[0] * grid[1], NH * head_dim, device="cuda", dtype=torch.float64)
    fused = mixer_triton(t["up"], t["conv_weight"], t["conv_bias"], t["w_qk"], t["b_qk"], t["norm_weight"],
                         t["norm_bias"], t["skip"], grid, BLOCK, NH, v_width, variant, 1e-6)
    outputs = {"fused": fused, "separate": separate_ops(t, grid, NH, v_width, variant)}
    grads = {k: torch.autograd.grad(y, [t[n] for n in names], dy.bfloat16()) for k, y in outputs.items()}
    y_ref = composed(ref, grid, NH, v_width, variant)
    ref_grads = torch.autograd.grad(y_ref, [ref[n] for n in names], dy)
    assert_close(fused, y_ref, torch.bfloat16, "y")
    for i, name in enumerate(names):
        fused_err, separate_err = (rel_err(grads[k][i], ref_grads[i]) for k in ("fused", "separate"))
        assert fused_err <= max(2 * separate_err, 3e-2), (name, fused_err, separate_err)
