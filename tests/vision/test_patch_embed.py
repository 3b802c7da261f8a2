"""The GEMM patch embedding against timm's strided-conv PatchEmbed with the same weights."""
import pytest
import torch
from timm.layers import PatchEmbed

from vision.patch_embed import PatchGemmEmbed


@pytest.mark.parametrize("img, patch, in_chans", [((16, 16), 4, 3), ((32, 24), 8, 3), ((48, 32), 16, 1)])
def test_matches_the_strided_conv(img, patch, in_chans):
    torch.manual_seed(0)
    conv = PatchEmbed(img, patch, in_chans, 12, flatten=False, output_fmt="NHWC", strict_img_size=False).double()
    gemm = PatchGemmEmbed(img, patch, in_chans, 12).double()
    gemm.load_state_dict(conv.state_dict())  # same keys: published checkpoints load unchanged
    x = torch.randn(2, in_chans, *img, dtype=torch.float64)
    y = gemm(x)
    assert y.shape == (2, img[0] // patch, img[1] // patch, 12) and y.is_contiguous()
    torch.testing.assert_close(y, conv(x), rtol=1e-12, atol=1e-12)
    assert gemm.grid_size == conv.grid_size and gemm.num_patches == conv.num_patches


def test_other_resolutions_and_bad_inputs():
    gemm = PatchGemmEmbed(16, 4, 3, 8)
    assert gemm(torch.randn(1, 3, 8, 20)).shape == (1, 2, 5, 8)
    with pytest.raises(ValueError, match="divisible by the patch size 4 x 4"):
        gemm(torch.randn(1, 3, 18, 16))
    with pytest.raises(ValueError, match=r"expected images \(B, 3, H, W\)"):
        gemm(torch.randn(1, 1, 16, 16))
