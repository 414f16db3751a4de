import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tests use tiny models: one thread is faster than several contending for shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
