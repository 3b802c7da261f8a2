"""benchmarks.common's sweep plumbing: tile_sweep (the pinned config as the baseline, every other candidate checked
against its outputs, the best returned), settings (kernel settings swapped in and restored) and save_sweep (rows
written before the table is printed)."""
import json
import types

import pytest
import torch

from benchmarks import common
from benchmarks.common import settings, tile_sweep


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


def test_settings_swap_and_restore_even_when_the_block_fails():
    module = types.SimpleNamespace(TILES=(1, 2), SPLIT=4)
    with settings(module, TILES=(8, 8), SPLIT=2):
        assert (module.TILES, module.SPLIT) == ((8, 8), 2)
    assert (module.TILES, module.SPLIT) == ((1, 2), 4)
    with pytest.raises(RuntimeError), settings(module, SPLIT=16):
        raise RuntimeError("a candidate that does not compile")
    assert module.SPLIT == 4


def test_save_sweep_writes_before_the_table(tmp_path, monkeypatch):
    def closed_pipe(rows):
        raise BrokenPipeError
    monkeypatch.setattr(common, "print_table", closed_pipe)
    rows = [common.row("ours:triton pinned", "case", "time", 1.0, "us")]
    with pytest.raises(BrokenPipeError):
        common.save_sweep(tmp_path / "sweep.json", rows)
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == rows

