"""Never silent: warn once per model when the backend quantized nothing, or much less than the model has.

A compile sees one frame; only the model knows how many linears it has, and only after a whole forward have all of
its frames been compiled. So the check runs when the first graph a model ran is called again with the same
parameters (the second forward has begun), over the merged report of the model (``runtime/model_report.py``).
"""
from __future__ import annotations

import logging
import weakref

import torch

from ..state import STATE
from .model_report import model_report

log = logging.getLogger("dvdq_compile")

class _State:
    """Per model: the first (graph, key parameter) of the current round of compiles, whether that round was
    checked, the newest graph serial it covered, and the messages already given."""

    def __init__(self, graph, key):
        self.start(graph, key)
        self.warned: set[str] = set()

    def start(self, graph, key) -> None:
        self.first = (weakref.ref(graph), weakref.ref(key))
        self.checked = False
        self.newest = graph.serial


def after_call(graph, key: torch.Tensor, owner: torch.nn.Module | None) -> None:
    """Called by every compiled graph after each call with the first parameter of its binding and the model that
    owns it. The check runs once per round of compiles (a new torch.compile of the model, or a recompile for new
    shapes, starts a round), at the start of the round's second forward; a message is given once per model."""
    if owner is None:
        return
    mem = STATE.model(owner)
    st = mem.get("coverage")
    if st is None:
        mem["coverage"] = _State(graph, key)
        return
    if st.checked:
        if graph.serial > st.newest:  # compiled after the last check: a new round
            st.start(graph, key)
        return
    st.newest = max(st.newest, graph.serial)
    if st.first[0]() is not graph or st.first[1]() is not key:
        return
    st.checked = True
    rep = model_report(owner)
    for msg in rep.warnings if rep is not None else []:
        if msg not in st.warned:
            st.warned.add(msg)
            log.warning("%s", msg)
