import gc

import torch

import dvdq_compile
from dvdq_compile.identity import IdentityMap
from tests.helpers import TinyDiT, compiled


class Key:
    pass


def test_entries_follow_identity_and_die_with_their_key():
    m, a, b = IdentityMap(), Key(), Key()
    m[a] = "A"
    assert m.get(a) == "A" and a in m and m.get(b) is None and b not in m
    del a
    gc.collect()
    assert len(m) == 0 and m.values() == []


def test_new_model_does_not_inherit_a_dead_models_shared_controller():
    x = torch.randn(1, 20, 24)
    for _ in range(3):  # dead models' parameter ids get reused by the next model's parameters
        a, b = TinyDiT(), TinyDiT()
        shared = dvdq_compile.share_controller(a, b)
        with torch.no_grad():
            compiled(a, delta=0.5)(x, timestep=torch.tensor([900]))
        assert dvdq_compile.controller(a) is shared
        del a, b
        gc.collect()
    fresh = TinyDiT()
    with torch.no_grad():
        compiled(fresh, delta=0.5)(x, timestep=torch.tensor([700]))
    ctrl = dvdq_compile.controller(fresh)
    assert ctrl is not shared and [r.timestep for r in ctrl.trace] == [700.0]
