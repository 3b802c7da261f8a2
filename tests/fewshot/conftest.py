import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The few-shot models are tiny: one intra-op thread avoids spin-waiting on busy CI cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
