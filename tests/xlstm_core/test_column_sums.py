"""The partial-sum reduction of the training kernels' backward passes (xlstm_core/column_sums_triton.py) against
torch's sum in fp64. On CPU the kernel runs under TRITON_INTERPRET=1 with small tiles (4 rows x 16 columns, splits of
at least 8 rows), so the shapes below take partial row steps, partial column blocks, one split, several splits and a
second split level; the `gpu` test runs the four buffers of a ViL-T training step at their real shapes."""
import pytest
import torch

from xlstm_core import column_sums_triton
from xlstm_core.column_sums_triton import column_sums


def _random(*shape, seed=0, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)


@pytest.mark.parametrize("shape", [(1, 5), (7, 16), (16, 5), (13, 37), (50, 20), (3, 11, 9), (2, 100, 33), (1, 700, 5)])
def test_sums_over_the_rows_match_torch(shape):
    x = _random(*shape)
    expected = x.double().sum(-2)
    out = column_sums(x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_shapes_cover_one_split_several_splits_and_a_second_level(monkeypatch):
    """The launches the shapes above make: guards the cases the comparison is meant to cover."""
    launches = []
    original = column_sums_triton._launch
    monkeypatch.setattr(column_sums_triton, "_launch", lambda x: launches.append(tuple(x.shape)) or original(x))
    column_sums(_random(13, 37))
    assert launches == [(1, 13, 37)]
    launches.clear()
    column_sums(_random(2, 100, 33))
    assert len(launches) == 2 and launches[1][1] > 1
    launches.clear()
    column_sums(_random(1, 700, 5))
    assert len(launches) == 3


def test_same_input_gives_the_same_bits():
    x = _random(2, 300, 21, seed=3) * 1e3
    assert torch.equal(column_sums(x), column_sums(x.clone()))


def test_no_rows_give_zeros():
    assert torch.equal(column_sums(torch.empty(2, 0, 6)), torch.zeros(2, 6))


@pytest.mark.parametrize("x", [torch.zeros(4, 8, dtype=torch.float16), torch.zeros(4, 8, 2).transpose(1, 2),
                               torch.zeros(8), torch.zeros(2, 2, 2, 2)])
def test_bad_inputs_are_refused(x):
    with pytest.raises(ValueError, match="contiguous fp32"):
        column_sums(x)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(784, 384), (3, 3328, 384), (88, 10000), (256, 3840)])
def test_vil_tiny_buffers_on_the_gpu(shape):
    """add_norm's, the norm-gate's, the conv + q/k op's and the grid conv's partial sums at ViL-T's shapes."""
    x = _random(*shape, device="cuda")
    torch.testing.assert_close(column_sums(x).double(), x.double().sum(-2), rtol=1e-5, atol=1e-4)
