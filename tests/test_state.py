"""The backend's state has one owner (``dvdq_compile.state.STATE``) that a test can swap for a fresh one."""
import torch

import dvdq_compile
from dvdq_compile.runtime.cache import CACHE
from dvdq_compile.runtime.registry import graphs_of
from dvdq_compile.state import STATE, fresh_state
from tests.helpers import TinyDiT, compiled

X = torch.randn(1, 20, 24)
T = torch.tensor([500])


def test_fresh_state_isolates_graphs_cache_and_freed_weights():
    model = TinyDiT()
    with torch.no_grad():
        compiled(model, act_bits=8, free_weights=True)(X, T)
    assert graphs_of(model) and len(CACHE) == 14 and dvdq_compile.freed_weights(model)
    outer = (len(STATE.graphs), len(CACHE), len(STATE.freed))
    with fresh_state():
        assert not graphs_of(model) and len(CACHE) == 0 and not STATE.freed.nonempty()
        other = TinyDiT()
        opts = {"lowering": "eager", "kernels": "reference", "progress": False, "act_bits": 8}
        with torch.no_grad():  # no torch._dynamo.reset() here: the outer graph must stay alive
            torch.compile(other, backend="dvdquant", options=opts)(X, T)
        assert graphs_of(other) and len(CACHE) == 14
    # the outer state is back as it was, and the inner one left nothing in it
    assert (len(STATE.graphs), len(CACHE), len(STATE.freed)) == outer and not graphs_of(other)
    assert dvdq_compile.report(model).count("quantize") == 12
