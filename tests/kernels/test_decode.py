"""Decode kernels (fused linear, fused mLSTM cell) against their PyTorch references.

On CPU the kernels run under TRITON_INTERPRET=1 at tiny shapes in fp32/fp16; the `gpu` tests repeat the checks at
the LRAM shapes (E=1024, 8 heads) in bf16 and fp32.
"""
import pytest
import torch

from kernels import decode
from kernels.decode import reference
from tests.kernels.tolerances import assert_close


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _linear_inputs(B, N, K, dtype, *, norm, bias, activation, residual, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = 2 * N if activation else N
    rand = lambda *shape: torch.randn(*shape, generator=g)
    args = dict(x=rand(B, K) * 3, weight=rand(rows, K) / K**0.5)
    kw = dict(norm_weight=1 + 0.1 * rand(K) if norm else None, bias=rand(rows) if bias else None,
              residual=rand(B, N) if residual else None, activation=activation)
    cast = lambda t: None if t is None else t.to(_device(), dtype)
    return {k: cast(v) for k, v in args.items()}, {k: v if k == "activation" else cast(v) for k, v in kw.items()}


LINEAR_CASES = [  # B, N, K, norm, bias, activation, residual
    (1, 24, 40, True, False, None, False),
    (3, 17, 33, False, True, "silu", True),
    (16, 40, 64, True, True, "gelu", False),
    (5, 8, 100, False, False, None, True),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,N,K,norm,bias,activation,residual", LINEAR_CASES)
def test_linear_matches_reference(B, N, K, norm, bias, activation, residual, dtype):
    args, kw = _linear_inputs(B, N, K, dtype, norm=norm, bias=bias, activation=activation, residual=residual)
    out = decode.linear(**args, **kw, backend="triton")
    ref = reference.linear(**{k: v.double() for k, v in args.items()},
                           **{k: v if k == "activation" or v is None else v.double() for k, v in kw.items()})
    assert out.dtype == dtype and out.shape == (B, N)
    assert_close(out, ref, dtype, "out")


def _cell_inputs(B, NH, E, DK, DV, dtype, *, with_state, variant, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    args = dict(x=rand(B, E), qkvo=rand(B, 2 * NH * DK + 2 * NH * DV))
    params = dict(norm_weight=1 + 0.1 * rand(E), gate_weight=rand(2 * NH, E) / E**0.5,
                  gate_bias=torch.cat([rand(NH) - 3, rand(NH) + 3]), head_norm_weight=1 + 0.1 * rand(NH * DV))
    state = None
    if with_state:
        m = rand(B, NH) if variant == "exp" else torch.zeros(B, NH)
        state = (rand(B, NH, DK, DV), rand(B, NH, DK).abs(), m)
    dev = _device()
    return ({k: v.to(dev, dtype) for k, v in args.items()}, {k: v.to(dev, dtype) for k, v in params.items()},
            None if state is None else tuple(s.to(dev) for s in state))


CELL_CASES = [  # B, NH, E, DK, DV, with state, variant, soft cap
    (1, 2, 32, 8, 16, True, "exp", 15.0),
    (3, 2, 48, 16, 8, False, "exp", None),
    (2, 3, 40, 4, 12, True, "sig", 15.0),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("B,NH,E,DK,DV,with_state,variant,cap", CELL_CASES)
def test_mlstm_cell_matches_reference(B, NH, E, DK, DV, with_state, variant, cap, dtype):
    args, params, state = _cell_inputs(B, NH, E, DK, DV, dtype, with_state=with_state, variant=variant)
    saved = None if state is None else [s.clone() for s in state]
    kw = dict(num_heads=NH, norm_eps=1e-6, gate_soft_cap=cap, head_norm_eps=1e-5, variant=variant)
    out, new_state = decode.mlstm_cell(**args, state=state, **params, **kw, backend="triton")
    double = lambda d: {k: v.double() for k, v in d.items()}
    ref, ref_state = reference.mlstm_cell(**double(args), state=None if state is None else
                                          tuple(s.double() for s in state), **double(params), **kw)
    assert out.dtype == dtype and all(s.dtype == torch.float32 for s in new_state)
    assert_close(out, ref, dtype, "out")
    for name, s, sr in zip("Cnm", new_state, ref_state):
        assert_close(s, sr, dtype, name, atol=1e-6)
    if state is not None:  # the given state is left as it was
        assert all(torch.equal(s, t) for s, t in zip(state, saved))


def test_mlstm_cell_in_place_overwrites_the_given_state():
    args, params, state = _cell_inputs(2, 2, 32, 8, 16, torch.float32, with_state=True, variant="exp")
    kw = dict(num_heads=2, norm_eps=1e-6, gate_soft_cap=15.0, head_norm_eps=1e-5, **params)
    out, fresh = decode.mlstm_cell(**args, state=tuple(s.clone() for s in state), **kw, backend="triton")
    out_inplace, same = decode.mlstm_cell(**args, state=state, **kw, inplace=True, backend="triton")
    assert all(s is t for s, t in zip(same, state))
    torch.testing.assert_close(out_inplace, out, rtol=0, atol=0)
    for s, t in zip(same, fresh):
        torch.testing.assert_close(s, t, rtol=0, atol=0)


def test_inputs_are_checked():
    args, _ = _linear_inputs(2, 8, 16, torch.float32, norm=False, bias=False, activation=None, residual=False)
    with pytest.raises(ValueError, match="1 to 16 rows"):
        decode.linear(torch.randn(17, 16), args["weight"])
    with pytest.raises(ValueError, match="activation"):
        decode.linear(args["x"], args["weight"], activation="relu")
    with pytest.raises(ValueError, match="gate and up rows"):
        decode.linear(args["x"], torch.randn(7, 16), activation="silu")
    cell, params, _ = _cell_inputs(1, 2, 32, 8, 16, torch.float32, with_state=False, variant="exp")
    with pytest.raises(ValueError, match="qkvo"):
        decode.mlstm_cell(cell["x"], cell["qkvo"][:, :-2], num_heads=2, norm_eps=1e-6, gate_soft_cap=None,
                          head_norm_eps=1e-5, **params)
    assert decode.cell_fits(64, 128) and decode.cell_fits(128, 128) and not decode.cell_fits(256, 512)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("B", [1, 16])
def test_lram_shapes_on_gpu(B, dtype):
    """The 157M-parameter LRAM block (E=1024, 8 heads, q/k 512, v 1024, FFN 2752) in both kernels."""
    for activation, rows, K, norm in [(None, 3072, 1024, True), ("silu", 2752, 1024, True), (None, 1024, 2752, False)]:
        args, kw = _linear_inputs(B, rows, K, dtype, norm=norm, bias=False, activation=activation, residual=not norm)
        ref = reference.linear(**{k: v.double() for k, v in args.items()},
                               **{k: v if k == "activation" or v is None else v.double() for k, v in kw.items()})
        assert_close(decode.linear(**args, **kw), ref, dtype, f"linear {rows}x{K}")
    args, params, state = _cell_inputs(B, 8, 1024, 64, 128, dtype, with_state=True, variant="exp")
    kw = dict(num_heads=8, norm_eps=1e-6, gate_soft_cap=15.0, head_norm_eps=1e-6)
    out, new_state = decode.mlstm_cell(**args, state=state, **params, **kw)
    double = lambda d: {k: v.double() for k, v in d.items()}
    ref, ref_state = reference.mlstm_cell(**double(args), state=tuple(s.double() for s in state),
                                          **double(params), **kw)
    assert_close(out, ref, dtype, "cell out")
    assert_close(new_state[0], ref_state[0], dtype, "cell C", atol=1e-6)


@pytest.mark.gpu
def test_programmatic_launch_changes_nothing_but_timing():
    """pdl=True (programmatic dependent launch on sm90+, a no-op elsewhere) gives bitwise the same outputs, also
    when the launches follow each other as in a block step."""
    args, kw = _linear_inputs(1, 3072, 1024, torch.bfloat16, norm=True, bias=False, activation=None, residual=False)
    cell, params, state = _cell_inputs(1, 8, 1024, 64, 128, torch.bfloat16, with_state=True, variant="exp")
    cell_kw = dict(num_heads=8, norm_eps=1e-6, gate_soft_cap=15.0, head_norm_eps=1e-6, **params)
    outs = []
    for pdl in (False, True):
        qkvo = decode.linear(cell["x"], args["weight"], norm_weight=kw["norm_weight"], pdl=pdl)
        out, new_state = decode.mlstm_cell(cell["x"], qkvo, state, **cell_kw, pdl=pdl)
        outs.append((qkvo, out, *new_state))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
