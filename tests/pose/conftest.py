import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every pose test runs on one torch thread (fixture in tests/conftest.py)."""
