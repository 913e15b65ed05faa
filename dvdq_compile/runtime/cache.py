"""Quantized-weight cache keyed by parameter identity and ``_version`` (docs/architecture.md §2, §7).

Dynamo shares one compiled graph between instances of one class (Wan 2.2's two experts), and the real
``nn.Parameter`` objects are the graph's runtime inputs; so the quantized tensors are looked up from the runtime
arguments on every call, never baked in at compile time. ``_version`` changes on in-place updates made through the
parameter itself (``p.copy_``, ``load_state_dict``), which triggers requantization; a write through ``p.data`` does
not bump it: call ``dvdq_compile.requantize(model)`` after such edits.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..kernels.dispatch import bgr_solver
from ..quant.qweight import QuantizedWeight, WeightSpec, quantize_weight
from ..state import STATE
from .free import require_storage

log = logging.getLogger("dvdq_compile")


@dataclass
class _Entry:
    ref: weakref.ref
    version: int
    qw: QuantizedWeight


class WeightCache:
    """The quantized weights, kept in ``STATE.weights``: ``(id(param), spec) -> entry``."""

    @property
    def _entries(self) -> dict:
        return STATE.weights

    def __len__(self):
        return len(self._entries)

    def lookup(self, p: torch.Tensor, spec: WeightSpec) -> QuantizedWeight | None:
        e = self._entries.get((id(p), spec))
        if e is None or e.ref() is not p or e.version != p._version:
            return None
        return e.qw

    def put(self, p: torch.Tensor, spec: WeightSpec, qw: QuantizedWeight) -> None:
        key = (id(p), spec)
        entries = self._entries

        def drop(_ref, key=key):
            entry = entries.get(key)
            if entry is not None and entry.ref is _ref:
                del entries[key]

        entries[key] = _Entry(weakref.ref(p, drop), p._version, qw)

    def get_many(self, params: list[torch.Tensor], specs: list[WeightSpec], names: list[str],
                 progress: bool = True, pre_scales: list | None = None,
                 bgr_impl: str = "auto") -> list[QuantizedWeight]:
        """Quantized weights for ``params``, quantizing the missing or stale ones (with a progress bar).
        ``pre_scales[i]`` (or None) multiplies weight i's columns first (its spec carries the matching key).
        ``bgr_impl="reference"`` keeps BGR on the PyTorch reference on a GPU too (option ``kernels="reference"``);
        a weight already cached under the same spec is reused either way."""
        out = [self.lookup(p, s) for p, s in zip(params, specs)]
        todo = [i for i, q in enumerate(out) if q is None]
        if todo:
            log.info("dvdq_compile: quantizing %d weight(s)", len(todo))
            bar = tqdm(todo, desc="dvdquant: quantizing weights", unit="layer",
                       disable=(not progress) or None, leave=False)
            for i in bar:
                p = params[i]
                require_storage(p, names[i], "quantizing it again (other options, or an edit of the parameter)")
                try:
                    rows_fn = bgr_solver(p.device, specs[i].group or p.shape[1], bgr_impl) \
                        if specs[i].method == "bgr" else None
                    qw = quantize_weight(p, specs[i], with_stats=True,
                                         pre_scale=pre_scales[i] if pre_scales is not None else None,
                                         rows_fn=rows_fn)
                except ValueError as e:
                    raise ValueError(f"dvdquant: cannot quantize {names[i]}: {e}") from None
                self.put(p, specs[i], qw)
                out[i] = qw
        return out

    def drop_params(self, params) -> int:
        ids = {id(p) for p in params}
        keys = [k for k in self._entries if k[0] in ids]
        for k in keys:
            del self._entries[k]
        return len(keys)

    def stats_for(self, p: torch.Tensor) -> dict:
        for (pid, _), e in self._entries.items():
            if pid == id(p) and e.ref() is p:
                return e.qw.stats
        return {}


CACHE = WeightCache()
