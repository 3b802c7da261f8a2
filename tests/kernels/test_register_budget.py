"""The parallel mLSTM cell's per-sequence kernels (gate rows, gate gradients) compile for an H100 without spills and
within 128 registers per thread at ViL-T/S/B's shapes.

Compiled for sm_90 on the CPU with the installed Triton (tests/kernels/sm90_registers.py), so CI catches what a GPU
profile found only a session later: the gate-gradient kernel at 254-255 registers and spilling (127 us per ViL-T
block in training, where 21 us would do). Its fixed form takes 50-64 registers.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.sm90_registers import PTXAS, cases

ROOT = Path(__file__).resolve().parents[2]
BUDGET = 128  # registers per thread: four programs of 4 warps per multiprocessor


@pytest.fixture(scope="module")
def compiled() -> dict[str, list[int]]:
    if not PTXAS.exists():
        pytest.skip(f"this Triton build has no ptxas at {PTXAS}")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "tests.kernels.sm90_registers"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(cases()))
def test_kernel_fits_the_register_budget_without_spills(compiled, case):
    used, spilled = compiled[case]
    assert spilled == 0 and used <= BUDGET, f"{case}: {used} registers, {spilled} bytes spilled"
