"""benchmarks.common.tile_sweep, the loop the tile sweeps share: the pinned config as the baseline, every other
candidate checked against its outputs, the best returned."""
import pytest
import torch

from benchmarks.common import tile_sweep


def test_tile_sweep_rows_and_best():
    rows = []
    timed = lambda tiles: (float(sum(tiles)), (torch.ones(3), torch.empty(0)))
    best = tile_sweep("case", (2, 2), [(2, 2), (1, 1), (4, 4)], timed, rows, field="tiles")
    assert best == (2.0, (1, 1))
    assert [(r["impl"], r["tiles"]) for r in rows] == [
        ("ours:triton pinned", (2, 2)), ("ours:triton candidate", (1, 1)), ("ours:triton candidate", (4, 4)),
        ("ours:triton best", (1, 1))]


def test_tile_sweep_refuses_a_candidate_with_other_outputs():
    with pytest.raises(AssertionError, match=r"\(3,\): outputs differ"):
        tile_sweep("case", (1,), [(3,)], lambda tiles: (1.0, (torch.full((4,), float(tiles[0])),)), [])
