"""The chunk-boundary state kernels (parallel local terms + scan) against a chunk-by-chunk PyTorch recurrence.

Runs under TRITON_INTERPRET=1 on CPU; packed sequences of unequal length, so chunks of several lengths, several
sequences and the slot bookkeeping are all exercised.
"""
import pytest
import torch
import torch.nn.functional as F

from kernels.mlstm import chunk_states_triton
from kernels.mlstm.chunk_layout import chunk_layout
from kernels.mlstm.chunk_states_triton import chunk_states
from tests.kernels.tolerances import assert_close

CU = (0, 9, 10, 150)
NH, DA, DX, CHUNK = 2, 16, 24, 80


def _gates(i, f, layout, sig):
    """Chunk-local cumulative log forget gates b and log input gates, as `_gate_kernel` writes them."""
    lf, li = F.logsigmoid(f), (F.logsigmoid(i) if sig else i)
    b = torch.empty_like(lf)
    for row, start, length in layout.chunks[:3].t().tolist():
        b[row, :, start:start + length] = lf[row, :, start:start + length].cumsum(-1)
    return b, li


def _reference(a, x, xaug, b, li, mrows, mstate, init, layout, sig, reverse, a_mult):
    """The recurrence chunk by chunk: the forward gives (C, n, m) at every slot, the reverse the state gradients."""
    c = torch.zeros(layout.n_slots, NH, DA, DX, dtype=torch.float64)
    n = torch.zeros(layout.n_slots, NH, DA, dtype=torch.float64)
    m_out = torch.zeros(layout.n_slots, NH, dtype=torch.float64)
    chunks = layout.chunks.t().tolist()
    for seq, (first, count, first_slot) in enumerate(layout.seqs.t().tolist()):
        for h in range(NH):
            acc = init[0][seq, h].double() if init is not None else torch.zeros(DA, DX, dtype=torch.float64)
            vec = init[1][seq, h].double() if init is not None else torch.zeros(DA, dtype=torch.float64)
            m = 0.0 if sig else (float(init[2][seq, h]) if init is not None and not reverse else float("-inf"))
            order = range(count - 1, -1, -1) if reverse else range(count)
            edge = first_slot + count if reverse else first_slot
            c[edge, h], n[edge, h], m_out[edge, h] = acc, vec, m
            for j in order:
                row, start, length, slot = chunks[first + j]
                sl = slice(start, start + length)
                bb, ll = b[row, h, sl].double(), li[row, h, sl].double()
                g = bb[-1]
                if reverse:
                    m_start, m_end = (0.0, 0.0) if sig else (float(mstate[slot, h]), float(mstate[slot + 1, h]))
                    w = torch.exp(bb + m_start - (0.0 if sig else mrows[row, h, sl].double()))
                else:
                    m_start = m
                    m_end = m if sig else max(float(g) + m, float((g - bb + ll).max()))
                    w = torch.exp(g - bb + ll - m_end)
                aw = a[row, h, sl].double() * (w * a_mult)[:, None]
                acc = torch.exp(g + m_start - m_end) * acc + aw.t() @ x[row, h, sl].double()
                vec = torch.exp(g + m_start - m_end) * vec + (aw * xaug[row, h, sl].double()[:, None]).sum(0)
                m = m_end
                dst = slot if reverse else slot + 1
                c[dst, h], n[dst, h], m_out[dst, h] = acc, vec, m
    return c, n, m_out


@pytest.mark.parametrize("variant", ["exp", "sig"])
@pytest.mark.parametrize("segment", [256, 32], ids=["whole_chunk", "segments"])
def test_chunk_states_match_sequential_recurrence(variant, segment, monkeypatch):
    """Forward states (C, n, m) at every slot, then the reverse pass on the forward's stabilisers; the local kernel
    either holds each chunk on chip or (segment < chunk) sums it in segments, as it does for chunks over 256."""
    monkeypatch.setattr(chunk_states_triton, "LOCAL_SEGMENT", segment)
    sig = variant == "sig"
    g = torch.Generator().manual_seed(11)
    rand = lambda *shape: torch.randn(*shape, generator=g)
    S = CU[-1]
    layout = chunk_layout(1, S, CHUNK, torch.device("cpu"), CU)
    n_seqs = len(CU) - 1
    a, x = rand(1, NH, S, DA), rand(1, NH, S, DX)
    b, li = _gates(rand(1, NH, S), rand(1, NH, S) + 3.0, layout, sig)
    init = (rand(n_seqs, NH, DA, DX), rand(n_seqs, NH, DA), torch.zeros(n_seqs, NH) if sig else rand(n_seqs, NH))
    mstate = torch.full((layout.n_slots, NH), float("nan"))
    # row stabilisers as the forward leaves them (m_t >= b_t + m_state), random weights for the vector term
    mrows, xaug = torch.zeros_like(b), rand(1, NH, S)
    for reverse in (False, True):
        out_c = torch.full((layout.n_slots, NH, DA, DX), float("nan"))  # fp32 here, to check it exactly
        out_end = torch.full((n_seqs, NH, DA, DX), float("nan"))
        out_n = torch.full((layout.n_slots, NH, DA), float("nan"))
        state_in = init if not reverse else init[:2] + (None,)
        a_mult = 0.25 if reverse else 1.0
        m_in = mstate.clone()
        chunk_states(layout, CHUNK, A=a, X=x, gb=b, gli=li, mstate=mstate, out_c=out_c, out_end=out_end, out_n=out_n,
                     init=state_in, a_mult=a_mult, reverse=reverse, sig=sig, precision="ieee",
                     xaug=xaug if reverse else None, mrows=mrows if reverse else None)
        aug = xaug if reverse else torch.ones_like(xaug)
        c_ref, n_ref, m_ref = _reference(a, x, aug, b, li, mrows, m_in, state_in, layout, sig, reverse, a_mult)
        assert_close(out_c, c_ref, torch.float32, f"C (reverse={reverse})")
        ends = layout.first_slots if reverse else layout.last_slots  # where each sequence's walk ends
        assert_close(out_end, c_ref[ends], torch.float32, f"C at the ends (reverse={reverse})")
        assert_close(out_n, n_ref, torch.float32, f"n (reverse={reverse})")
        if not reverse:
            torch.testing.assert_close(mstate.double(), m_ref, rtol=1e-6, atol=1e-6)
            m_before = mstate[layout.chunks[3].long()].t()
            for index, (row, start, length, _) in enumerate(layout.chunks.t().tolist()):
                mrows[row, :, start:start + length] = (b[row, :, start:start + length] + m_before[:, index, None]
                                                        + rand(NH, length).abs())
