import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import (docs/architecture.md §8)

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True)
settings.load_profile("ci")

HAS_CUDA = torch.cuda.is_available()
# The tests run many small ops: one intra-op thread is as fast on 2 idle cores and avoids OpenMP spin-waits
# (100x slowdowns seen on a loaded machine). Benchmarks do not inherit this.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _fresh_state():
    """Every test starts with an empty backend state (no compiled graphs bound, empty weight cache, nothing
    freed): what one test compiled cannot leak into another's report or cache."""
    from dvdq_compile.state import fresh_state

    with fresh_state():
        yield
