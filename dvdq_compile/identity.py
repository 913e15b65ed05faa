"""A mapping keyed by object identity that forgets an entry when its key object is garbage-collected.

Plain ``dict[id(obj)]`` maps are wrong for long-lived state: once ``obj`` dies, a new object can get the same
``id`` and silently inherit its entry (seen: a new model picking up a dead model's δ controller).
"""
from __future__ import annotations

import weakref


class IdentityMap:
    def __init__(self):
        self._d: dict[int, tuple[weakref.ref, object]] = {}

    def get(self, obj, default=None):
        e = self._d.get(id(obj))
        if e is None or e[0]() is not obj:
            return default
        return e[1]

    def __contains__(self, obj) -> bool:
        return self.get(obj, _MISSING) is not _MISSING

    def __setitem__(self, obj, value) -> None:
        key, d = id(obj), self._d

        def drop(ref, key=key):
            e = d.get(key)
            if e is not None and e[0] is ref:
                del d[key]

        d[key] = (weakref.ref(obj, drop), value)

    def pop(self, obj, default=None):
        if obj not in self:
            return default
        return self._d.pop(id(obj))[1]

    def values(self):
        return [e[1] for e in list(self._d.values()) if e[0]() is not None]

    def nonempty(self) -> bool:
        """O(1) (``len`` walks the entries): dead keys are dropped by their weakref callbacks."""
        return bool(self._d)

    def __len__(self) -> int:
        return sum(e[0]() is not None for e in self._d.values())


_MISSING = object()
