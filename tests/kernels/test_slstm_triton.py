"""Triton sLSTM/LSTM kernels against the PyTorch reference: outputs, final states and all gradients.

CPU runs use Triton's interpreter (tiny shapes, fp32/fp16: the interpreter's bf16 dot is unreliable; one program per
head, since interpreted programs cannot wait on each other); `gpu` tests cover realistic shapes, bf16, extreme
pre-activations and heads split across programs on a CUDA device.
"""
import pytest
import torch

from kernels import slstm
from kernels.slstm import reference
from kernels.slstm.tiling import Tiling
from kernels.slstm.triton import slstm_triton
from tests.kernels.tolerances import TOLERANCE, assert_close, rel_err

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STREAMED = Tiling(block_b=16, block_e=16, block_k=16, num_warps=2, num_stages=2, hoist_r=False)
HOISTED = Tiling(block_b=16, block_e=32, block_k=32, num_warps=4, num_stages=1, hoist_r=True)
# Split heads (GPU only): programs of a head exchange h_t / dG_t through a grid barrier every step.
SPLIT6_HOISTED = Tiling(block_b=16, block_e=32, block_k=256, num_warps=4, num_stages=1, hoist_r=True, split=6)
SPLIT3_STREAMED = Tiling(block_b=16, block_e=64, block_k=64, num_warps=4, num_stages=2, hoist_r=False, split=3)
# The interpreter evaluates masked-out lanes too (padding rows divide 0 by 0); those lanes are never stored.
pytestmark = [pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")]


def make_inputs(B, T, NH, DH, dtype=torch.float32, scale=1.0, seed=0, with_state=True, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    hidden = NH * DH
    x = torch.randn(B, T, 4 * hidden, generator=g) * scale
    w = torch.randn(4, NH, DH, DH, generator=g) / DH ** 0.5
    b = torch.randn(4 * hidden, generator=g) * 0.5
    leaves = [x.to(device, dtype), w.to(device, dtype), b.to(device, dtype)]
    if with_state:
        c, m, h = (torch.randn(B, hidden, generator=g) for _ in range(3))
        n = torch.rand(B, hidden, generator=g) + 1.0  # n >= 1 as on any reachable state
        leaves += [s.to(device) for s in (c, n, m, h)]
    return [t.requires_grad_() for t in leaves]


def run_both(leaves, NH, cell, tiling=None, ref_dtype=None):
    """Forward + backward through Triton and through the reference (optionally on upcast copies)."""
    x, w, b, *state = leaves
    h, last = slstm_triton(x, w, b, NH, initial_state=state or None, return_last_state=True, cell=cell,
                           tiling=tiling)
    ref_leaves = [t.detach().to(ref_dtype or t.dtype).requires_grad_() for t in leaves]
    rx, rw, rb, *rstate = ref_leaves
    hr, last_r = reference.slstm_recurrent(rx, rw, rb, NH, initial_state=rstate or None, return_last_state=True,
                                           cell=cell)
    g = torch.Generator().manual_seed(7)
    dy = torch.randn(h.shape, generator=g).to(h.device)
    ds = [torch.randn(s.shape, generator=g).to(s.device) for s in last]
    live = [s for s, name in zip(range(4), "cnmh") if not (cell == "lstm" and name in "nm")]
    loss = (h.float() * dy).sum() + sum((last[k] * ds[k]).sum() for k in live)
    loss_r = (hr.float() * dy).sum() + sum((last_r[k].float() * ds[k]).sum() for k in live)
    grads = torch.autograd.grad(loss, leaves)
    grads_r = torch.autograd.grad(loss_r, ref_leaves, allow_unused=True)
    return (h, last, grads), (hr, last_r, grads_r)


def check(ours, ref, dtype, cell, factor=1.0):
    (h, last, grads), (hr, last_r, grads_r) = ours, ref
    assert_close(h, hr, dtype, "h", factor)
    for name, s, sr in zip("cnmh", last, last_r):
        assert s.dtype == torch.float32, f"state {name} must be fp32"
        assert_close(s, sr, dtype, f"state {name}", factor)
    for name, gr, grr in zip(("dx", "dR", "dbias", "dc0", "dn0", "dm0", "dh0"), grads, grads_r):
        if grr is None:  # the LSTM cell ignores n and m
            assert cell == "lstm" and torch.count_nonzero(gr) == 0, name
        else:
            assert_close(gr, grr, dtype, name, factor)


@pytest.mark.parametrize("cell", ["slstm", "lstm"])
@pytest.mark.parametrize("tiling", [STREAMED, HOISTED], ids=["streamed", "hoisted"])
def test_matches_reference_fp32(cell, tiling):
    """Several e/k tiles with a pipelined reduction (streamed) and weights held on chip (hoisted)."""
    leaves = make_inputs(B=3, T=5, NH=2, DH=32, scale=2.0)
    check(*run_both(leaves, 2, cell, tiling), torch.float32, cell)


def test_ragged_head_dim_batch_one_and_empty_state():
    """DH=24 leaves a masked tail tile, B=1 fifteen masked rows; no initial state (m starts at -inf)."""
    leaves = make_inputs(B=1, T=4, NH=2, DH=24, with_state=False)
    check(*run_both(leaves, 2, "slstm", STREAMED), torch.float32, "slstm")


def test_fp16_inputs_keep_fp32_states():
    leaves = make_inputs(B=2, T=4, NH=1, DH=16, dtype=torch.float16)
    ours, ref = run_both(leaves, 1, "slstm", ref_dtype=torch.float32)
    assert ours[0].dtype == torch.float16
    check(ours, ref, torch.float16, "slstm")


def test_extreme_preactivations_stay_finite():
    """Gate pre-activations of order +-60: exp input gate would overflow without the stabiliser."""
    leaves = make_inputs(B=2, T=6, NH=1, DH=16, scale=30.0)
    ours, ref = run_both(leaves, 1, "slstm", Tiling(16, 16, 16, 2, 1, hoist_r=True))
    for t in (ours[0], *ours[1], *ours[2]):
        assert torch.isfinite(t).all()
    check(ours, ref, torch.float32, "slstm", factor=10.0)


def test_public_dispatch_and_state_carry():
    """backend='triton' through kernels.slstm; two halves with the carried state equal the whole sequence."""
    x, w, b = (t.detach() for t in make_inputs(B=2, T=6, NH=1, DH=16, with_state=False))
    whole = slstm(x, recurrent_weight=w, bias=b, num_heads=1, backend="triton")
    first, state = slstm(x[:, :3], recurrent_weight=w, bias=b, num_heads=1, return_last_state=True,
                         backend="triton")
    second = slstm(x[:, 3:], recurrent_weight=w, bias=b, num_heads=1, initial_state=state, backend="triton")
    assert rel_err(torch.cat([first, second], 1), whole) < 1e-6
    assert rel_err(whole, reference.slstm_recurrent(x, w, b, 1)) < TOLERANCE[torch.float32]


def test_infeasible_tiling_and_dtype_raise_before_launch():
    x, w, b = (t.detach() for t in make_inputs(B=2, T=3, NH=1, DH=16, with_state=False))
    bad = Tiling(block_b=16, block_e=16, block_k=16, num_warps=16, num_stages=1, hoist_r=False)
    with pytest.raises(ValueError, match="MMA tile"):
        slstm_triton(x, w, b, 1, tiling=bad)
    with pytest.raises(ValueError, match="float64"):
        slstm_triton(x.double(), w.double(), b.double(), 1)


# ------------------------------------------------------------------------------------------------ GPU (realistic)
@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["slstm", "lstm"])
@pytest.mark.parametrize("B,NH,DH", [(16, 4, 192), (1, 2, 256), (7, 16, 16), (64, 4, 64), (3, 1, 100)])
def test_gpu_bf16_matches_fp32_reference(B, NH, DH, cell):
    leaves = make_inputs(B=B, T=256, NH=NH, DH=DH, dtype=torch.bfloat16, scale=2.0)
    check(*run_both(leaves, NH, cell, ref_dtype=torch.float32), torch.bfloat16, cell)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_fp32_fp16(dtype):
    leaves = make_inputs(B=5, T=128, NH=4, DH=128, dtype=dtype)
    check(*run_both(leaves, 4, "slstm", ref_dtype=torch.float32), dtype, "slstm")


SPLIT_CASES = {  # (B, NH, DH, tiling, dtypes); fp32 weights of a 192-wide head do not fit in registers
    "192-split6-hoisted": (16, 4, 192, SPLIT6_HOISTED, (torch.bfloat16,)),
    "192-split3-streamed": (16, 4, 192, SPLIT3_STREAMED, (torch.bfloat16, torch.float32)),
    "24-split2-ragged": (5, 3, 24, Tiling(16, 16, 32, 2, 1, hoist_r=True, split=2), (torch.bfloat16, torch.float32)),
    "64-split2-batch-tiles": (40, 2, 64, Tiling(16, 32, 64, 4, 1, hoist_r=True, split=2),
                              (torch.bfloat16, torch.float32)),
}


@pytest.mark.gpu
@pytest.mark.parametrize("cell", ["slstm", "lstm"])
@pytest.mark.parametrize("B,NH,DH,tiling,dtype", [
    pytest.param(B, NH, DH, t, dt, id=f"{name}-{str(dt).split('.')[-1]}")
    for name, (B, NH, DH, t, dtypes) in SPLIT_CASES.items() for dt in dtypes
])
def test_gpu_split_heads_match_reference(B, NH, DH, tiling, dtype, cell):
    """Outputs, final states and all gradients of split-head kernels (both passes) against the fp32 loop."""
    leaves = make_inputs(B=B, T=300, NH=NH, DH=DH, dtype=dtype, scale=2.0)
    check(*run_both(leaves, NH, cell, tiling, ref_dtype=torch.float32), dtype, cell)


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.parametrize("tiling", [None, SPLIT6_HOISTED], ids=["autotuned", "split6"])
@pytest.mark.parametrize("scale", [1.0, 40.0], ids=["normal", "extreme"])
def test_gpu_long_sequences_no_nan(scale, tiling):
    """T=4096 forward (and backward) at the benchmark shape; extreme pre-activations must stay finite."""
    leaves = make_inputs(B=16, T=4096, NH=4, DH=192, dtype=torch.bfloat16, scale=scale, with_state=False)
    ours, ref = run_both(leaves, 4, "slstm", tiling, ref_dtype=torch.float32)
    for t in (ours[0], *ours[1], *ours[2]):
        assert torch.isfinite(t).all()
    assert rel_err(ours[0], ref[0]) < TOLERANCE[torch.bfloat16]
    assert rel_err(ours[2][0], ref[2][0]) < TOLERANCE[torch.bfloat16] * (1 if scale == 1.0 else 3)
