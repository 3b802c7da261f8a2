"""Tiling solver of the persistent sLSTM kernels: feasibility, ranking, and clear errors for infeasible shapes."""
import dataclasses

import pytest
import torch

from kernels.slstm import tiling
from kernels.slstm.tiling import (
    Problem,
    Tiling,
    device_limits,
    interpreter_limits,
    nominal_limits,
    solve,
    validate,
)

H100 = nominal_limits()


@pytest.mark.parametrize("head_dim", [16, 24, 64, 100, 128, 192, 256])
@pytest.mark.parametrize("batch", [1, 16, 256])
@pytest.mark.parametrize("elem_bytes", [2, 4])
@pytest.mark.parametrize("pass_", tiling.PASSES)
def test_supported_range_is_feasible_and_ranked(head_dim, batch, elem_bytes, pass_):
    p = Problem(head_dim, batch, 4, elem_bytes, pass_)
    best = solve(p, H100, top_k=6)
    assert 1 <= len(best) <= 6
    costs = [t.cost_us for t in best]
    assert costs == sorted(costs) and costs[0] > 0
    dh16 = 16 * -(-head_dim // 16)
    for t in best:
        validate(p, H100, t)  # the solver only returns tilings its own constraints accept
        for blk in (t.block_e, t.block_k):
            assert dh16 % blk == 0 or blk == max(16, 1 << (head_dim - 1).bit_length())
        assert t.block_b <= max(16, 1 << (batch - 1).bit_length())


def test_all_feasible_candidates_meet_resource_limits():
    p = Problem(192, 16, 4, 2, "backward")
    feasible, removed = tiling.candidates(p, H100)
    assert feasible and removed
    assert {t.split for t in feasible} == {1, 3, 6, 12}  # 192 / block_e for block_e in 64, 32, 16
    for t in feasible:
        smem = tiling._smem_estimate(p, t.block_b, t.block_e, t.block_k, t.num_stages, t.hoist_r, t.split)
        assert smem <= H100.smem_bytes
        regs = tiling._register_estimate(p, t.block_b, t.block_e, t.block_k, t.num_warps, t.hoist_r, t.split)
        assert regs <= 255 and regs * 32 * t.num_warps <= H100.regs_per_sm
        assert (t.block_b // 16) * (t.block_e // 8) >= t.num_warps
        if t.split > 1:
            assert -(-192 // t.block_e) == t.split and 4 * t.split <= H100.num_sms


def test_small_heads_stay_whole_large_heads_split_with_weights_on_chip():
    small = solve(Problem(64, 16, 4, 2), H100)[0]
    assert small.hoist_r and small.split == 1
    large = solve(Problem(192, 16, 4, 2), H100)[0]
    assert large.hoist_r and large.split > 1
    # Weight traffic or the grid barrier grows with the head: the modelled step time must too.
    costs = [solve(Problem(dh, 16, 4, 2), H100)[0].cost_us for dh in (64, 128, 192, 256)]
    assert costs == sorted(costs)


def test_interpreter_never_splits_a_head():
    """Interpreted programs run one after another, so a grid barrier would deadlock: split = 1 only."""
    p = Problem(192, 16, 4, 2)
    assert all(t.split == 1 for t in solve(p, interpreter_limits(), top_k=8))
    with pytest.raises(ValueError, match="grid barrier"):
        validate(p, interpreter_limits(), Tiling(16, 32, 256, 4, 1, hoist_r=True, split=6))


def test_split_must_fit_head_and_multiprocessors():
    p = Problem(192, 16, 4, 2)
    validate(p, H100, Tiling(16, 32, 256, 4, 1, hoist_r=True, split=6))
    with pytest.raises(ValueError, match="one gate-output tile per program"):
        validate(p, H100, Tiling(16, 32, 256, 4, 1, hoist_r=True, split=4))
    crowded = Problem(192, 256, 16, 2)  # 16 heads x 16 batch tiles x 6 programs > 132 multiprocessors
    with pytest.raises(ValueError, match="co-resident programs"):
        validate(crowded, H100, Tiling(16, 32, 256, 4, 1, hoist_r=True, split=6))
    assert all(t.split == 1 for t in solve(Problem(192, 4096, 16, 2), H100, top_k=8))


def test_more_programs_than_multiprocessors_cost_more_waves():
    few = solve(Problem(128, 16, 4, 2), H100)[0].cost_us
    many = solve(Problem(128, 256, 16, 2), H100)[0].cost_us
    assert many > few


def test_infeasible_device_raises_with_constraint_name():
    tiny = dataclasses.replace(H100, name="tiny", smem_bytes=1024)
    with pytest.raises(ValueError, match="no feasible sLSTM kernel tiling.*shared memory"):
        solve(Problem(64, 16, 4, 2), tiny)


def test_too_many_batch_tiles_raise():
    with pytest.raises(ValueError, match="batch tiles"):
        solve(Problem(16, 128 * 65535 + 1, 1, 2), H100)


def test_validate_names_broken_constraints():
    p = Problem(192, 16, 4, 2)
    with pytest.raises(ValueError, match="one tile over the whole head per program"):
        validate(p, H100, Tiling(16, 64, 64, 4, 1, hoist_r=True))
    with pytest.raises(ValueError, match="divides head_dim"):
        validate(p, H100, Tiling(16, 128, 64, 4, 1, hoist_r=False))
    with pytest.raises(ValueError, match="registers per thread"):
        validate(p, H100, Tiling(128, 256, 256, 1, 1, hoist_r=False))


@pytest.mark.parametrize("kwargs,match", [
    ({"head_dim": 0, "batch": 1, "num_heads": 1, "elem_bytes": 2}, "head_dim"),
    ({"head_dim": 16, "batch": 1, "num_heads": 1, "elem_bytes": 8}, "elem_bytes"),
    ({"head_dim": 16, "batch": 1, "num_heads": 1, "elem_bytes": 2, "pass_": "sideways"}, "pass_"),
])
def test_problem_checks_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Problem(**kwargs)


def test_device_limits_without_gpu_are_the_interpreters():
    assert device_limits(torch.device("cpu")) == interpreter_limits()
    assert not interpreter_limits().grid_sync and H100.grid_sync
    if torch.cuda.is_available():
        lim = device_limits(torch.device("cuda"))
        assert lim.smem_bytes > 48 * 1024 and lim.num_sms > 0
