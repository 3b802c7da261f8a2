"""Shared pytest setup: `gpu` tests skip without CUDA, `slow` tests run only with --runslow.

Without a GPU the Triton kernels run on Triton's CPU interpreter; the variable must be set before any kernel module
is imported, hence here at collection start.
"""
import os
import socket

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow: pass --runslow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)


@pytest.fixture
def gloo_env():
    """``env(rank, world)`` -> the environment torchrun gives one process, on a free local port (for mp.spawn tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return lambda rank, world: dict(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
