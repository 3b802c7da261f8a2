"""The residual add + LayerNorm between two pre-norm blocks as one Triton op (xlstm_core/add_norm_triton.py) against
PyTorch's ops in fp64: x_new = x + scale * flip?(y), out = [flip?(layer_norm(x_new)) | ones], forward and every
gradient. On CPU the kernels run under TRITON_INTERPRET=1; token counts are not multiples of the row tiles and D is
not a power of two. The `gpu` test runs bf16 outputs at ViL-T's shape."""
import pytest
import torch
import torch.nn.functional as F

from tests.kernels.tolerances import assert_close
from xlstm_core.add_norm_triton import add_norm


def reference(x, y, weight, bias, eps, flip_y, flip_out, ones, scale):
    x_new = x
    if y is not None:
        y = y.flip(1) if flip_y else y
        x_new = x + (y if scale is None else scale[:, None, None] * y)
    out = F.layer_norm(x_new, x.shape[-1:], weight, bias, eps)
    out = out.flip(1) if flip_out else out
    return x_new, torch.cat([out, out.new_ones(*out.shape[:2], ones)], dim=-1)


def case(B=3, T=13, D=40, *, has_y=True, bias=True, scale=False, y_dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    return dict(x=3 * rand(B, T, D) + 1, y=rand(B, T, D).to(y_dtype) if has_y else None,
                weight=1 + 0.2 * rand(D), bias=0.2 * rand(D) if bias else None,
                scale=torch.tensor([0.0, 1.25] * B)[:B] if scale else None)


def check(t, flip_y, flip_out, ones, out_dtype=torch.float32, use_x_new=True, device="cpu"):
    t = {k: None if v is None else v.to(device).requires_grad_(k != "scale" and v.is_floating_point())
         for k, v in t.items()}
    x_new, out = add_norm(t["x"], t["y"], t["weight"], t["bias"], 1e-5, flip_y=flip_y, flip_out=flip_out, ones=ones,
                          scale=t["scale"], out_dtype=out_dtype)
    r = {k: None if v is None else v.detach().double().requires_grad_(v.requires_grad) for k, v in t.items()}
    x_new_ref, out_ref = reference(r["x"], r["y"], r["weight"], r["bias"], 1e-5, flip_y, flip_out, ones, r["scale"])
    assert out.dtype == out_dtype and out.shape == out_ref.shape
    assert_close(x_new, x_new_ref, torch.float32, "x_new")
    assert_close(out, out_ref, out_dtype, "out")
    names = [k for k in ("x", "y", "weight", "bias") if t[k] is not None]
    g_out = torch.randn_like(out_ref)
    outputs, ref_outputs, grads_out = [out], [out_ref], [g_out]
    if use_x_new and t["y"] is not None:
        g_x_new = torch.randn_like(x_new_ref)
        outputs, ref_outputs, grads_out = [out, x_new], [out_ref, x_new_ref], [g_out, g_x_new]
    got = torch.autograd.grad(outputs, [t[k] for k in names], [g.to(o.dtype) for g, o in zip(grads_out, outputs)])
    want = torch.autograd.grad(ref_outputs, [r[k] for k in names],
                               [g.to(o.dtype).double() for g, o in zip(grads_out, outputs)])
    for name, a, b in zip(names, got, want):
        assert a.dtype == t[name].dtype
        assert_close(a, b, t[name].dtype if name == "y" else torch.float32, f"d {name}")


@pytest.mark.parametrize("flip_y, flip_out", [(False, False), (True, False), (False, True), (True, True)])
def test_matches_the_reference(flip_y, flip_out):
    check(case(), flip_y, flip_out, ones=8)


@pytest.mark.parametrize("ones", [0, 1, 8])
def test_ones_columns_and_half_precision_outputs(ones):
    """The up-projection's ones columns after the normalised features; y and out in fp16 as under autocast."""
    check(case(y_dtype=torch.float16, seed=1), True, False, ones=ones, out_dtype=torch.float16)


def test_drop_path_scale_without_bias_and_without_x_new_gradient():
    """A dropped sample (scale 0) keeps only x; x_new's gradient None (the final norm's case); no norm bias."""
    check(case(bias=False, scale=True, seed=2), False, True, ones=0, use_x_new=False)


def test_without_y_normalises_x():
    """The first block's norm: no residual add, x_new is x itself."""
    t = case(has_y=False, seed=3)
    x_new, _ = add_norm(t["x"], None, t["weight"], t["bias"], 1e-5, flip_out=True, ones=8)
    assert x_new is t["x"]
    check(t, False, True, ones=8)


def test_rejects_bad_inputs():
    t = case()
    with pytest.raises(ValueError, match="shape"):
        add_norm(t["x"], t["y"][:, :5], t["weight"], t["bias"], 1e-5)
    with pytest.raises(ValueError, match="one value per sample"):
        add_norm(t["x"], t["y"], t["weight"], t["bias"], 1e-5, scale=torch.ones(5))
    with pytest.raises(ValueError, match="ones"):
        add_norm(t["x"], t["y"], t["weight"], t["bias"], 1e-5, ones=9)
    with pytest.raises(ValueError, match=r"\(40,\) vectors"):
        add_norm(t["x"], t["y"], t["weight"][:8], t["bias"], 1e-5)
    wide = torch.randn(1, 2, 600)
    with pytest.raises(ValueError, match="at most 512 features"):
        add_norm(wide, wide, torch.ones(600), None, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("width", [192, 384])
def test_gpu_bf16_at_vil_widths(width):
    """ViL-T/S's residual streams (batch 32, 196 tokens; each row of the tile table): fp32 x, bf16 y and out, both
    flips, ones and DropPath's factors; then the final norm's case (fp32 out, no x_new gradient)."""
    check(case(32, 196, width, y_dtype=torch.bfloat16, scale=True, seed=5), True, True, ones=8,
          out_dtype=torch.bfloat16, device="cuda")
    check(case(32, 196, width, y_dtype=torch.bfloat16, seed=6), False, False, ones=0, device="cuda", use_x_new=False)
