"""tests/quant: run single-threaded.

The reference quantizers are many tiny tensor ops; on a small shared CPU box intra-op threading makes them
10-100x slower (thread hand-off dominates), so each test here runs with one thread and restores the setting after.
"""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
