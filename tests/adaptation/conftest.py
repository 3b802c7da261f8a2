"""The adaptation tests train tiny models, for which one intra-op thread is fastest and immune to CPU contention."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
