"""The chunkwise mLSTM kernels' pinned tile configs fit an H100's shared memory at long chunks and wide heads.

Compiled for sm_90 on the CPU (tests/kernels/sm90_shared_memory.py), so CI catches a config that would fail to
launch on the GPU, as chunk size 512 once did: the local kernel kept the whole chunk's weighted rows on chip
(270 KB at L=512 against the H100's 227 KB).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.sm90_shared_memory import H100_SHARED_BYTES, cases

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shared() -> dict[str, int]:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "tests.kernels.sm90_shared_memory"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0 and "ptxas" in run.stderr:
        pytest.skip(f"this Triton build cannot compile for sm_90: {run.stderr.strip().splitlines()[-1]}")
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(cases()))
def test_pinned_config_fits_h100_shared_memory(shared, case):
    assert shared[case] <= H100_SHARED_BYTES, f"{case} needs {shared[case]} bytes of shared memory"
