"""Fused parallel mLSTM (kernels/mlstm/parallel_triton.py) against the PyTorch parallel reference.

On CPU the kernel runs under TRITON_INTERPRET=1 in fp32/fp16 (the interpreter's bf16 dot is unreliable) with
32 x 16 sequence tiles; heads of at most 64 features take the whole-head kernels there, wider ones (DH = 96,
DHQK = 64 / DHV = 128) the sliced kernels with 32-wide head-dim tiles. Inputs are strided views of
(B, S, NH, D) storage, the layout the mLSTM layer passes. The `gpu` tests run bf16 at ViL's shapes and under
torch.compile.
"""
import pytest
import torch

from kernels import mlstm
from kernels.mlstm.parallel_triton import MAX_LEN, mlstm_parallel_triton
from tests.kernels.tolerances import assert_close

GRAD_NAMES = ("dq", "dk", "dv", "di", "df")


def make_inputs(B, NH, S, DK, DV, *, dtype=torch.float32, device="cpu", i_scale=1.0, f_scale=1.0, f_bias=3.0,
                seed=0):
    """Leaves q, k, v (B, NH, S, D) and gates (B, NH, S), each a transposed view of (B, S, NH, ...) storage."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    q, k, v = rand(B, S, NH, DK), rand(B, S, NH, DK), rand(B, S, NH, DV)
    igate, fgate = i_scale * rand(B, S, NH), f_scale * rand(B, S, NH) + f_bias
    leaves = [q.to(dtype), k.to(dtype), v.to(dtype), igate, fgate]
    return [t.to(device).requires_grad_().transpose(1, 2) for t in leaves]


def run(leaves, variant, backend, normalize=True, **kw):
    q, k, v, i, f = leaves
    h = mlstm(q, k, v, igate=i, fgate=f, variant=variant, form="parallel", backend=backend, normalize=normalize,
              **kw)
    weight = torch.randn(h.shape, generator=torch.Generator().manual_seed(1)).to(h.device)
    return h, torch.autograd.grad((h.float() * weight).sum(), leaves)


def check(leaves, variant, dtype, *, factor=1.0, grad_factor=2.0, atol=1e-5, normalize=True):
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    h, grads = run(leaves, variant, "triton", normalize)
    hr, grads_r = run(ref_leaves, variant, "torch", normalize)
    assert h.dtype == leaves[0].dtype
    assert_close(h, hr, dtype, "h", factor, atol=atol)
    for name, gr, grr in zip(GRAD_NAMES, grads, grads_r):
        assert_close(gr, grr, dtype, name, grad_factor, atol=atol)


CPU_CASES = [  # S, DHQK, DHV, variant, dtype, normalize
    (1, 96, 96, "exp", torch.float32, True),
    (16, 96, 96, "sig", torch.float32, True),
    (16, 64, 64, "sig", torch.float16, False),
    (100, 64, 128, "exp", torch.float32, True),
    (196, 96, 96, "exp", torch.float32, True),
    # heads of at most 64 features take the whole-head kernels under the interpreter (two column parts: 48 = 32 + 16,
    # 40 in 32 + 16 with padding), the wider ones above the sliced kernels; 32-row tiles end-aligned (77 = 2 * 32 + 13)
    (77, 32, 16, "exp", torch.float32, True),
    (40, 16, 32, "sig", torch.float16, True),
    (77, 48, 48, "exp", torch.float32, True),
    (33, 64, 40, "sig", torch.float32, True),
]


@pytest.mark.parametrize("S,DK,DV,variant,dtype,normalize", CPU_CASES)
def test_matches_reference(S, DK, DV, variant, dtype, normalize):
    check(make_inputs(1, 2 if S <= 16 else 1, S, DK, DV, dtype=dtype, seed=S), variant, dtype, normalize=normalize)


@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_extreme_gates(variant):
    """Input gates up to +-40 and forget pre-activations up to +-20: every exp stays finite, the m < 0 rows take the
    overflow-safe normaliser, and outputs and gradients match at the fp32 tolerance."""
    g = torch.Generator().manual_seed(7)
    leaves = make_inputs(1, 1, 60, 32, 32, seed=7)
    with torch.no_grad():
        leaves[3].copy_(80 * torch.rand(leaves[3].shape, generator=g) - 40)
        leaves[4].copy_(40 * torch.rand(leaves[4].shape, generator=g) - 20)
    check(leaves, variant, torch.float32)


@pytest.mark.parametrize("D,variant", [(192, "exp"), (384, "sig")])
def test_whole_head_kernels_at_vil_s_and_b_heads(monkeypatch, D, variant):
    """On the GPU heads up to SMALL_HEAD take the whole-head kernels, ViL-S's as parts 128 + 64 and ViL-B's as
    256 + 128; here under the interpreter with its whole-head limit raised to SMALL_HEAD."""
    import importlib

    pt = importlib.import_module("kernels.mlstm.parallel_triton")
    monkeypatch.setattr(pt, "INTERPRETER_SMALL_HEAD", pt.SMALL_HEAD)
    assert pt.whole_head(D, D)
    check(make_inputs(1, 1, 40, D, D, seed=D), variant, torch.float32)


def test_gpu_tiles_follow_the_head_width(monkeypatch):
    """On the GPU, heads up to SMALL_HEAD features take the whole-head kernels, held as two power-of-two column parts
    that cover the head without padding where they can (96 = 64 + 32), with the tiles of their width's row; wider
    heads the sliced pins with their own head-dim slices (a mix-up would only show as a slow or failing GPU run)."""
    import importlib

    pt = importlib.import_module("kernels.mlstm.parallel_triton")
    monkeypatch.setattr(pt, "interpreter_enabled", lambda: False)
    monkeypatch.setattr(pt, "WHOLE_HEAD_TILES", ((128, {case: (16, 32, 2, 3) for case in pt.TILES}),
                                                 (256, {case: (32, 16, 4, 2) for case in pt.TILES})))
    monkeypatch.setattr(pt, "SMALL_HEAD", 256)
    monkeypatch.setattr(pt, "TILES", {case: (128, 64, 64, 32, 8, 1) for case in pt.TILES})
    assert pt.whole_head(96, 96) and pt.whole_head(64, 128) and pt.whole_head(192, 192)
    assert not pt.whole_head(384, 384) and not pt.whole_head(64, 384)
    assert pt._whole_head_tiles("dq", 96, 96) == pt._whole_head_tiles("dq", 64, 128) == (16, 32, 2, 3)
    assert pt._whole_head_tiles("dkdv", 192, 192) == pt._whole_head_tiles("dkdv", 130, 64) == (32, 16, 4, 2)
    assert [pt.head_parts(d, d) for d in (96, 128, 64, 48, 80, 100, 24, 8)] == [
        (64, 32), (64, 64), (32, 32), (32, 16), (64, 16), (64, 64), (16, 16), (16, 16)]
    assert pt.head_parts(64, 128) == (64, 64) and pt.head_parts(192, 192) == (128, 64)
    assert pt._sliced_tiles("fwd", 384, 384) == (128, 64, 64, 32, 8, 1)


def test_misaligned_views_are_copied_to_vector_aligned_storage():
    """q/k/v views whose strides are not multiples of 16 elements (here the token stride 2 * 32 + 8 of a folded
    projection) are copied to (B, S, NH, D) storage, where Triton can vectorise; aligned views and heads narrower
    than 16 are passed through. The result equals that of the aligned inputs."""
    from kernels.mlstm.parallel_triton import _vector_aligned

    wide = torch.randn(2, 12, 2 * 32 + 8)  # (B, S, 2 * NH * DH + gates), NH = 2, DH = 16
    q = wide[..., :32].unflatten(-1, (2, 16)).transpose(1, 2)
    k = wide[..., 32:64].unflatten(-1, (2, 16)).transpose(1, 2)
    aligned_q = _vector_aligned(q)
    assert aligned_q.stride() == (12 * 32, 16, 32, 1) and torch.equal(aligned_q, q)
    assert _vector_aligned(aligned_q) is aligned_q
    narrow = torch.randn(2, 12, 3 * 12).unflatten(-1, (3, 12)).transpose(1, 2)[..., :8]
    assert _vector_aligned(narrow) is narrow
    v = torch.randn(2, 12, 2, 16).transpose(1, 2)
    gates = [torch.randn(2, 2, 12), torch.randn(2, 2, 12) + 3]
    outputs = [mlstm_parallel_triton(a, b, v, *gates) for a, b in ((q, k), (q.contiguous(), k.contiguous()))]
    torch.testing.assert_close(outputs[0], outputs[1])


def test_states_and_long_sequences_leave_the_fused_kernel():
    q, k, v, i, f = (t.detach() for t in make_inputs(1, 1, 12, 16, 16, seed=3))
    state = (torch.randn(1, 1, 16, 16), torch.randn(1, 1, 16), torch.zeros(1, 1))
    h, last = mlstm(q, k, v, igate=i, fgate=f, form="parallel", initial_state=state, return_last_state=True,
                    backend="triton")
    hr, last_r = mlstm(q, k, v, igate=i, fgate=f, form="parallel", initial_state=state, return_last_state=True,
                       backend="torch")
    assert_close(h, hr, torch.float32, "h")
    assert_close(last[0], last_r[0], torch.float32, "C")
    long = torch.zeros(1, 1, MAX_LEN + 1, 16)
    gates = torch.zeros(1, 1, MAX_LEN + 1)
    with pytest.raises(ValueError, match="at most 256"):
        mlstm_parallel_triton(long, long, long, gates, gates)


@pytest.mark.gpu
@pytest.mark.parametrize("DH", [96, 192, 384, 512])
def test_gpu_bf16_vil_shapes(DH):
    """ViL-T/S/B head dims at 196 patches (the whole-head kernels, a row of their tile table each), and a head over
    SMALL_HEAD (the sliced kernels), bf16, against the fp32 reference."""
    check(make_inputs(4, 4, 196, DH, DH, dtype=torch.bfloat16, device="cuda", seed=DH), "exp", torch.bfloat16,
          atol=1e-4)


@pytest.mark.gpu
def test_gpu_fp32_odd_length_and_sig():
    for variant in ("exp", "sig"):
        check(make_inputs(2, 3, 77, 64, 128, device="cuda", seed=2), variant, torch.float32, atol=1e-5)


@pytest.mark.gpu
def test_gpu_under_torch_compile_without_graph_breaks():
    def cell(q, k, v, i, f):
        return mlstm(q, k, v, igate=i, fgate=f, form="parallel", backend="triton")

    leaves = make_inputs(2, 4, 196, 96, 96, dtype=torch.bfloat16, device="cuda", seed=11)
    compiled = torch.compile(cell, fullgraph=True)
    h = compiled(*leaves)
    grads = torch.autograd.grad(h.float().square().sum(), leaves)
    h_eager = cell(*leaves)
    grads_eager = torch.autograd.grad(h_eager.float().square().sum(), leaves)
    assert_close(h, h_eager, torch.bfloat16, "h", 0.1)
    for name, a, b in zip(GRAD_NAMES, grads, grads_eager):
        assert_close(a, b, torch.bfloat16, name, 0.1, atol=1e-5)


PACKED_CASES = [  # S, NH, DHQK, DHV, padding columns of qk and v, variant, dtype
    (50, 2, 16, 32, 8, 4, "exp", torch.float32),
    (33, 2, 48, 48, 0, 16, "sig", torch.float32),
    (20, 1, 96, 96, 16, 16, "exp", torch.float16),  # the sliced kernels
    (MAX_LEN + 4, 1, 16, 16, 0, 0, "exp", torch.float32),  # too long for the fused kernel: the chunkwise one runs
]


def check_packed(monkeypatch, S, NH, DK, DV, pad_qk, pad_v, variant, dtype, device="cpu", B=1, v_offset=0):
    """mlstm_packed on [q | k | gate shares | padding] and [v | gate shares | padding] buffers against the
    reference on the unpacked views: h and the gradients of both buffers, the padding's gradient written as zeros
    (outputs are allocated NaN-filled here, so a column the kernels skip would show). With v_offset, the v buffer is
    the columns from v_offset on of a wider tensor (the layer's up-projection), whose gradient is checked."""
    from kernels import mlstm_packed

    g = torch.Generator().manual_seed(S)
    qk = torch.randn(B, S, 2 * NH * (DK + 1) + pad_qk, generator=g)
    v = torch.randn(B, S, v_offset + NH * (DV + 2) + pad_v, generator=g)
    qk[..., 2 * NH * DK + NH : 2 * NH * (DK + 1)] += 1.5  # forget-gate shares: gates mostly open
    v[..., v_offset + NH * DV + NH : v_offset + NH * (DV + 2)] += 1.5
    leaves = [qk.to(device, dtype).requires_grad_(), v.to(device, dtype).requires_grad_()]
    ref_leaves = [t.detach().float().requires_grad_() for t in leaves]
    kw = dict(num_heads=NH, head_dim_qk=DK, head_dim_v=DV, variant=variant)
    empty_like = torch.empty_like
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: empty_like(*a, **k).fill_(float("nan")))
    h = mlstm_packed(leaves[0], leaves[1][..., v_offset:], **kw, backend="triton")
    hr = mlstm_packed(ref_leaves[0], ref_leaves[1][..., v_offset:], **kw, backend="torch")
    assert h.shape == (B, S, NH, DV) and h.dtype == dtype
    weight = torch.randn(h.shape, generator=g).to(device)
    grads = torch.autograd.grad((h.float() * weight).sum(), leaves)
    grads_r = torch.autograd.grad((hr * weight).sum(), ref_leaves)
    assert_close(h, hr, dtype, "h", atol=1e-4 if dtype == torch.bfloat16 else 1e-5)
    for name, grad, grad_r in zip(("dqk", "dv"), grads, grads_r):
        assert_close(grad, grad_r, dtype, name, 2.0, atol=1e-4 if dtype == torch.bfloat16 else 1e-5)
    assert (grads[0][..., 2 * NH * (DK + 1) :] == 0).all() and (grads[1][..., v_offset + NH * (DV + 2) :] == 0).all()
    assert (grads[1][..., :v_offset] == 0).all()


@pytest.mark.parametrize("S,NH,DK,DV,pad_qk,pad_v,variant,dtype", PACKED_CASES)
def test_packed_projections_match_the_unpacked_reference(monkeypatch, S, NH, DK, DV, pad_qk, pad_v, variant, dtype):
    check_packed(monkeypatch, S, NH, DK, DV, pad_qk, pad_v, variant, dtype)


def test_packed_v_may_be_columns_of_a_wider_projection(monkeypatch):
    """The ViL layer's v buffer is the last columns of its up-projection ([x_inner | z | v | gate shares]): read
    through its batch and token strides, gate shares included."""
    check_packed(monkeypatch, 37, 2, 16, 16, 8, 4, "sig", torch.float32, B=2, v_offset=64)


def test_packed_inputs_with_strided_columns():
    """Column-strided buffers (a transposed layout) give the same h as dense ones."""
    from kernels import mlstm_packed

    qk, v = torch.randn(2, 20, 2 * 2 * 17), torch.randn(2, 20, 2 * 18)
    kw = dict(num_heads=2, head_dim_qk=16, head_dim_v=16, backend="triton")
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in (qk, v)]
    assert strided[0].stride(-1) != 1
    torch.testing.assert_close(mlstm_packed(*strided, **kw), mlstm_packed(qk, v, **kw), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["exp", "sig"])
def test_gpu_packed_bf16_vil_tiny_layout(monkeypatch, variant):
    """ViL-T's packed layer outputs (196 tokens, 4 heads of 96; widths 784 and 400) in bf16."""
    check_packed(monkeypatch, 196, 4, 96, 96, 8, 8, variant, torch.bfloat16, device="cuda", B=4)


def test_packed_projections_reject_bad_layouts():
    from kernels import mlstm_packed

    qk, v = torch.zeros(1, 4, 2 * 2 * 9), torch.zeros(1, 4, 2 * 10)
    mlstm_packed(qk, v, num_heads=2, head_dim_qk=8, head_dim_v=8, backend="torch")
    with pytest.raises(ValueError, match="at least"):
        mlstm_packed(qk[..., :-1], v, num_heads=2, head_dim_qk=8, head_dim_v=8)
    with pytest.raises(ValueError, match=r"\(B, S, W_v\)"):
        mlstm_packed(qk, v[:, :3], num_heads=2, head_dim_qk=8, head_dim_v=8)
    with pytest.raises(ValueError, match="one dtype"):
        mlstm_packed(qk, v.double(), num_heads=2, head_dim_qk=8, head_dim_v=8)
