"""Integer-constraint tiling solver for the persistent sLSTM/LSTM kernels (in the spirit of FlashRNN's ConstrINT).

`split` programs of the kernels share one head and one tile of `block_b` batch rows and loop over all time steps.
With split = 1 a program walks the head's gate outputs in tiles of `block_e` columns per step; with split > 1 each
program owns exactly one such tile (of all four gates) and the head's programs meet at a grid-level barrier every
step. The reduction over the previous hidden state runs in tiles of `block_k`; with `hoist_r` (one tile over the
head) a program's slice of the recurrent weights is loaded once, before the time loop, and stays on chip for the
whole sequence. `num_warps` and `num_stages` (software-pipelining depth of the reduction loop) complete a tiling.

`solve` enumerates the integer domains, removes tilings that break a hardware or kernel constraint (shared memory,
registers per thread and per multiprocessor, warps per tile, head-dim divisibility, grid size, co-residency of a
split grid, no grid barrier under the interpreter) and ranks the rest with a small cost model of one time step.
The kernels' autotuner only times the top few. When nothing is feasible it raises a ValueError naming the
constraint that removed the last candidates, before anything is launched.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import torch

BLOCKS = (16, 32, 64, 128, 256)
WARPS = (1, 2, 4, 8, 16)
STAGES = (1, 2, 3, 4)
SPLITS = (1, 2, 3, 4, 6, 8, 12, 16)
PASSES = ("forward", "backward")
MAX_GRID_Y = 65535
# Live fp32 tiles of (block_b, block_e) in the gate epilogue (accumulators, inputs, states, temporaries), per pass.
LIVE_TILES = {"forward": 10, "backward": 14}
REGISTER_RESERVE = 40  # addresses, indices, loop counters per thread
GRID_BARRIER_LATENCIES = 1.0  # release + observed arrival of the head's other programs, in L2 latencies


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What the solver needs to know about the GPU (per program = per thread block)."""

    name: str
    smem_bytes: int            # shared memory one block may use (opt-in maximum)
    regs_per_thread: int       # architectural limit, 255 on NVIDIA
    regs_per_sm: int           # register file of one multiprocessor (32-bit registers)
    max_warps: int             # warps per block
    num_sms: int
    l1_bytes: int              # unified L1/shared memory of one multiprocessor
    clock_ghz: float
    mma_flops_per_clk: float   # dense 16-bit tensor-core flops per clock and multiprocessor
    grid_sync: bool = True     # programs of a launch run concurrently (false under TRITON_INTERPRET)


def nominal_limits() -> DeviceLimits:
    """H100-SXM-like limits, used where no GPU is visible (CPU interpreter runs, tests)."""
    return DeviceLimits("nominal-H100", smem_bytes=232448, regs_per_thread=255, regs_per_sm=65536, max_warps=32,
                        num_sms=132, l1_bytes=262144, clock_ghz=1.75, mma_flops_per_clk=4096.0)


def interpreter_limits() -> DeviceLimits:
    """Nominal limits for TRITON_INTERPRET runs, whose programs execute one after another: no grid barriers."""
    return dataclasses.replace(nominal_limits(), name="interpreter", grid_sync=False)


def device_limits(device: torch.device | None = None) -> DeviceLimits:
    """Limits of a CUDA device read from its properties; the interpreter's (CPU tensors) otherwise."""
    if device is None or device.type != "cuda":
        return interpreter_limits()
    return _cuda_limits(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_limits(index: int) -> DeviceLimits:
    p = torch.cuda.get_device_properties(index)
    clock = getattr(p, "clock_rate", 0) / 1e6 or 1.5  # kHz -> GHz
    return DeviceLimits(p.name, smem_bytes=p.shared_memory_per_block_optin, regs_per_thread=255,
                        regs_per_sm=p.regs_per_multiprocessor, max_warps=p.max_threads_per_block // 32,
                        num_sms=p.multi_processor_count, l1_bytes=max(p.shared_memory_per_multiprocessor, 131072),
                        clock_ghz=clock, mma_flops_per_clk=4096.0 if p.major >= 9 else 2048.0)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """One launch configuration of the persistent kernels; `cost_us` is the model's time per step."""

    block_b: int
    block_e: int
    block_k: int
    num_warps: int
    num_stages: int
    hoist_r: bool
    split: int = 1
    cost_us: float = 0.0


@dataclasses.dataclass(frozen=True)
class Problem:
    """What the tiling depends on: head dim, batch, heads, operand bytes (2 for bf16/fp16, 4 for fp32), pass."""

    head_dim: int
    batch: int
    num_heads: int
    elem_bytes: int
    pass_: str = "forward"

    def __post_init__(self):
        for name in ("head_dim", "batch", "num_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.elem_bytes not in (2, 4):
            raise ValueError(f"elem_bytes must be 2 (bf16/fp16) or 4 (fp32), got {self.elem_bytes}")
        if self.pass_ not in PASSES:
            raise ValueError(f"pass_ must be one of {PASSES}, got {self.pass_!r}")


def _pow2_at_least(n: int, floor: int = 16) -> int:
    return max(floor, 1 << (n - 1).bit_length())


def head_tile(head_dim: int) -> int:
    """The head dim rounded up to a power of two (at least 16): the widest tile over a head."""
    return _pow2_at_least(head_dim)


def _product_width(p: Problem, be: int, split: int) -> int:
    """Output width of one recurrent matmul: a gate-output tile forward; backward (dh_{t-1}) the whole head, or
    the program's slice of it when the head is split."""
    return head_tile(p.head_dim) if p.pass_ == "backward" and split == 1 else be


def _register_estimate(p: Problem, bb: int, be: int, bk: int, warps: int, hoist: bool, split: int = 1) -> float:
    threads = 32 * warps
    epilogue = LIVE_TILES[p.pass_] * bb * be
    # Pipelined weight tiles wait in shared memory; about one gate's fragments are live in registers at a time
    # (hoisted weights are all live).
    weight_tiles = 4 if hoist else 1
    operands = (bb * bk + weight_tiles * bk * _product_width(p, be, split)) * p.elem_bytes / 4
    return (epilogue + operands) / threads + REGISTER_RESERVE


def _smem_estimate(p: Problem, bb: int, be: int, bk: int, stages: int, hoist: bool, split: int = 1) -> int:
    width = _product_width(p, be, split)
    weights = (1 if hoist else stages) * 4 * bk * width * p.elem_bytes
    state = stages * (4 if p.pass_ == "backward" else 1) * bb * bk * p.elem_bytes  # h tile, or 4 dG tiles
    layout_scratch = bb * max(be, width) * 4  # one fp32 tile converted between the MMA and elementwise layouts
    return weights + state + layout_scratch


def _violations(p: Problem, lim: DeviceLimits, t: Tiling) -> list[str]:
    """The constraints a tiling breaks as "name: detail" (empty when feasible)."""
    dh_tiles = _pow2_at_least(p.head_dim)
    dh16 = 16 * math.ceil(p.head_dim / 16)
    out = []
    for name, blk in (("block_e", t.block_e), ("block_k", t.block_k)):
        if blk > dh_tiles:
            out.append(f"{name} fits the head: {blk} > {dh_tiles}")
        elif blk != dh_tiles and dh16 % blk:
            out.append(f"{name} divides head_dim rounded to 16: {dh16} % {blk} != 0")
    if t.block_b > _pow2_at_least(p.batch):
        out.append(f"block_b fits the batch: {t.block_b} > {_pow2_at_least(p.batch)}")
    if t.hoist_r and (t.block_k != dh_tiles or t.block_e * t.split < p.head_dim):
        out.append("hoisted weights need one tile over the whole head per program")
    if t.split > 1:
        if not lim.grid_sync:
            out.append("split heads need a grid barrier: programs do not run concurrently on " + lim.name)
        if math.ceil(p.head_dim / t.block_e) != t.split:
            out.append(f"one gate-output tile per program: ceil({p.head_dim} / {t.block_e}) != split {t.split}")
        programs = p.num_heads * math.ceil(p.batch / t.block_b) * t.split
        if programs > lim.num_sms:
            out.append(f"co-resident programs: {programs} > {lim.num_sms} multiprocessors")
    if t.num_warps > lim.max_warps:
        out.append(f"warps per block: {t.num_warps} > {lim.max_warps}")
    if (t.block_b // 16) * (t.block_e // 8) < t.num_warps:
        out.append("every warp owns at least one 16x8 MMA tile")
    if t.num_stages > 1 and (t.hoist_r or t.block_k >= p.head_dim):
        out.append("pipelining needs a reduction loop of several tiles")
    regs = _register_estimate(p, t.block_b, t.block_e, t.block_k, t.num_warps, t.hoist_r, t.split)
    if regs > lim.regs_per_thread:
        out.append(f"registers per thread: {regs:.0f} > {lim.regs_per_thread}")
    if min(regs, lim.regs_per_thread) * 32 * t.num_warps > lim.regs_per_sm:
        out.append(f"registers per block: > {lim.regs_per_sm}")
    smem = _smem_estimate(p, t.block_b, t.block_e, t.block_k, t.num_stages, t.hoist_r, t.split)
    if smem > lim.smem_bytes:
        out.append(f"shared memory: {smem} B > {lim.smem_bytes} B")
    if math.ceil(p.batch / t.block_b) > MAX_GRID_Y:
        out.append(f"batch tiles per head: {math.ceil(p.batch / t.block_b)} > {MAX_GRID_Y}")
    return out


def step_cost_us(p: Problem, lim: DeviceLimits, t: Tiling) -> float:
    """Modelled time of one recurrent step (microseconds), in waves of programs over the multiprocessors.

    Weight tiles stream from L2 (or L1 when the head's weights fit there) through a software pipeline: each
    reduction tile takes the longest of its bytes over the bandwidth, its MMA time, and the load latency divided by
    the tiles in flight (num_stages - 1; Little's law, the bound that dominates measurements on an H100). Every
    matmul restarts the pipeline (one exposed latency); the gate math and a per-step floor (storing h_t, the barrier,
    reading h_t back) come on top, and a split head pays a grid barrier (a global atomic round trip) per step. The
    forward runs one matmul per gate-output tile; the backward an elementwise pass over its tiles and one matmul
    over the program's slice of dh. Constants are H100 figures calibrated on the B16/4x192 case.
    """
    clk = lim.clock_ghz * 1e3  # cycles per microsecond
    latency = 1750.0  # about 1 us from issuing an L2 load to using it, under load
    n_e = 1 if t.split > 1 else math.ceil(p.head_dim / t.block_e)
    n_k = math.ceil(p.head_dim / t.block_k)
    width = _product_width(p, t.block_e, t.split)
    n_mm = n_e if p.pass_ == "forward" else 1
    w_bytes = 4 * p.head_dim * p.head_dim * p.elem_bytes
    if t.hoist_r:
        bytes_per_clk = float("inf")
    elif t.split == 1 and w_bytes + _smem_estimate(p, t.block_b, t.block_e, t.block_k, t.num_stages, False) \
            <= lim.l1_bytes * 0.8:
        bytes_per_clk = 128.0  # the head's weights stay in L1 across steps (a split's grid barrier flushes L1)
    else:
        bytes_per_clk = 64.0
    stage_bytes = 4 * t.block_k * min(width, p.head_dim) * p.elem_bytes
    rate = lim.mma_flops_per_clk * (1.0 if p.elem_bytes == 2 else 1 / 32)  # fp32 operands run on the FMA units
    mma = 2 * t.block_b * t.block_k * 4 * width / (rate * min(1.0, t.num_warps / 4))
    in_flight = latency / max(t.num_stages - 1, 1) if not t.hoist_r else 0.0
    per_k = max(stage_bytes / bytes_per_clk, mma, in_flight) + 40
    matmuls = n_mm * (latency + n_k * per_k)
    gate_math = n_e * (60 * t.block_b * t.block_e / (32 * t.num_warps) + 200)
    phase1 = n_e * latency if p.pass_ == "backward" else 0.0  # loads of saved gates/states, one latency per tile
    grid_barrier = GRID_BARRIER_LATENCIES * latency if t.split > 1 else 0.0
    waves = math.ceil(p.num_heads * math.ceil(p.batch / t.block_b) * t.split / lim.num_sms)
    return waves * (matmuls + gate_math + phase1 + 2 * latency + grid_barrier) / clk


def _domain(p: Problem):
    """The integer domains, with the variables that only matter for some tilings enumerated only there: hoisting
    takes one reduction tile over the head, pipelining (num_stages > 1) a streamed loop of several tiles, and a
    split gives each program one gate-output tile (split = ceil(head_dim / block_e))."""
    dh_tiles = head_tile(p.head_dim)
    for bb, be, bk, warps in itertools.product(BLOCKS[:4], BLOCKS, BLOCKS, WARPS):
        for split in sorted({1, math.ceil(p.head_dim / be)} & set(SPLITS)):
            for hoist in (False, True) if bk == dh_tiles else (False,):
                for stages in STAGES if not hoist and bk < p.head_dim else (1,):
                    yield Tiling(bb, be, bk, warps, stages, hoist, split)


def candidates(p: Problem, lim: DeviceLimits) -> tuple[list[Tiling], dict[str, int]]:
    """All tilings of the integer domains that satisfy every constraint, ranked by modelled step time.

    Also returns, per constraint, how many tilings it removed (for the error message when none is left).
    """
    feasible, removed = [], {}
    for t in _domain(p):
        broken = _violations(p, lim, t)
        for name in broken:
            name = name.split(":")[0]
            removed[name] = removed.get(name, 0) + 1
        if not broken:
            feasible.append(dataclasses.replace(t, cost_us=step_cost_us(p, lim, t)))
    feasible.sort(key=lambda t: (t.cost_us, -t.block_b, t.num_warps, t.split))
    return feasible, removed


def _distinct_shapes(ranked: list[Tiling]) -> list[Tiling]:
    """The best tiling of each tile shape, so that the autotuner measures different shapes, not near-duplicates."""
    seen, out = set(), []
    for t in ranked:
        shape = (t.block_b, t.block_e, t.block_k, t.hoist_r, t.split)
        if shape not in seen:
            seen.add(shape)
            out.append(t)
    return out


def validate(p: Problem, lim: DeviceLimits, t: Tiling) -> None:
    """Raise a ValueError naming every constraint a given tiling breaks."""
    broken = _violations(p, lim, t)
    if broken:
        raise ValueError(f"tiling {t} is infeasible for {p} on {lim.name}: " + "; ".join(broken))


@functools.lru_cache(maxsize=1024)
def solve(p: Problem, lim: DeviceLimits | None = None, top_k: int = 4) -> tuple[Tiling, ...]:
    """The `top_k` best feasible tilings of distinct tile shapes (cached); ValueError when there is none."""
    lim = lim or nominal_limits()
    feasible, removed = candidates(p, lim)
    if not feasible:
        worst = sorted(removed.items(), key=lambda kv: -kv[1])[:3]
        raise ValueError(
            f"no feasible sLSTM kernel tiling for head_dim={p.head_dim}, batch={p.batch}, num_heads={p.num_heads}, "
            f"{p.elem_bytes}-byte operands ({p.pass_}) on {lim.name}; most restrictive constraints: "
            + "; ".join(f"{name} (removed {n})" for name, n in worst)
            + ". Use backend='torch' for this shape."
        )
    return tuple(_distinct_shapes(feasible)[:top_k])
