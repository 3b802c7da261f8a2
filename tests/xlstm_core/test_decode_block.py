"""The fused decode step of a post-up mLSTM block (xlstm_core.fused_decode) equals the block's unfused step.

On CPU the fused path runs through the PyTorch references and, under TRITON_INTERPRET=1, through the Triton kernels.
"""
import pytest
import torch

from xlstm_core import xLSTMBlockStack, xLSTMBlockStackConfig
from xlstm_core.config import XLSTM7B_STYLE
from xlstm_core.fused_decode import fused_step_applies, post_up_block_step


def _block(activation: str, bias: bool, variant: str = "exp"):
    torch.manual_seed(0)
    cfg = xLSTMBlockStackConfig(**{**XLSTM7B_STYLE, "ffn_activation": activation, "bias": bias,
                                   "ffn_multiple_of": 16}, embedding_dim=32, num_heads=2, num_blocks=1,
                                mlstm_variant=variant)
    block = xLSTMBlockStack(cfg).blocks[0].eval()
    with torch.no_grad():
        for p in block.parameters():  # move off the init (zero gate weights, unit norm scales)
            p.add_(0.1 * torch.randn_like(p))
    return block


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("activation,bias,variant", [("silu", False, "exp"), ("gelu", True, "sig")])
@torch.no_grad()
def test_fused_block_step_equals_unfused(activation, bias, variant, backend):
    block = _block(activation, bias, variant)
    xs = torch.randn(4, 3, 1, 32)
    fused_state = unfused_state = None
    for x in xs:
        assert not fused_step_applies(block, x, True)  # CPU tensors: the block itself takes the unfused path
        expected, unfused_state = block(x, unfused_state, return_state=True)
        out, fused_state = post_up_block_step(block, x, fused_state, backend=backend)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
        for s, t in zip(fused_state.cell, unfused_state.cell):
            torch.testing.assert_close(s, t, atol=1e-5, rtol=1e-4)


def test_fused_step_is_not_taken_outside_inference():
    block = _block("silu", False)
    x = torch.randn(2, 1, 32)
    with torch.no_grad():
        assert not fused_step_applies(block, torch.randn(2, 3, 32), True)  # a sequence
        assert not fused_step_applies(block, x, False)  # no state to carry
    assert not fused_step_applies(block, x, True)  # gradients on


@torch.no_grad()
def test_in_place_context_overwrites_the_state_on_triton():
    from xlstm_core.fused_decode import state_updates_in_place

    block = _block("silu", False)
    x = torch.randn(2, 1, 32)
    _, state = post_up_block_step(block, x, None, backend="triton")
    kept = [t.clone() for t in state.cell]
    _, fresh = post_up_block_step(block, x, state, backend="triton")
    assert all(torch.equal(t, k) for t, k in zip(state.cell, kept))  # outside the context: untouched
    with state_updates_in_place():
        _, same = post_up_block_step(block, x, state, backend="triton")
    assert all(s is t for s, t in zip(same.cell, state.cell))
    for s, t in zip(same.cell, fresh.cell):
        torch.testing.assert_close(s, t, rtol=0, atol=0)
