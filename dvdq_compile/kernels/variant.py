"""Fused vs split kernel choice for the quantized linear, read from a decision table (``table.json``: data).

The table is written by ``bench/kernels.py --write-table`` from measured GPU timings; each entry is one
(device, abits, N, K, M) with the faster variant. Lookup: entries with the same device name, ``abits``, ``N``
and ``K``; the one whose M is nearest on a log scale decides. No entry -> the table's ``default`` ("split": the
two-kernel baseline (docs/architecture.md §6), since a fused prologue recomputes the rotation for every N-tile).
"""
from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path

VARIANTS = ("fused", "split")
TABLE_PATH = Path(__file__).with_name("table.json")
ENV_TABLE = "DVDQ_KERNEL_TABLE"  # override the table file (tests, experiments)


def _path() -> Path:
    return Path(os.environ.get(ENV_TABLE) or TABLE_PATH)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime: float) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        return {"default": "split", "entries": []}
    if table.get("default") not in VARIANTS:
        table["default"] = "split"
    table.setdefault("entries", [])
    return table


def load_table(path: str | os.PathLike | None = None) -> dict:
    p = Path(path) if path is not None else _path()
    try:
        mtime = p.stat().st_mtime
    except OSError:
        mtime = -1.0
    return _load(str(p), mtime)


def device_name(device) -> str:
    """The name entries are keyed by: ``torch.cuda.get_device_name`` for CUDA, else the device type."""
    if isinstance(device, str) and not device.startswith(("cuda", "cpu")):
        return device  # already a name
    import torch
    d = torch.device(device) if device is not None else torch.device("cpu")
    if d.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(d)
    return d.type


def choose_variant(M: int, N: int, K: int, abits: int, device=None, table: dict | None = None,
                   group: int | None = None, rotate: int | None = None) -> str:
    """``"fused"`` or ``"split"`` for an (M, N, K) linear with ``abits``-bit activations on ``device``.

    ``M`` may be a SymInt/symbol; a non-integer M uses the table default. ``group``/``rotate``, when given, must
    match an entry's (entries without them match any).
    """
    t = table if table is not None else load_table()
    default = t.get("default", "split")
    try:
        m = int(M)
    except (TypeError, ValueError):
        return default
    name = device_name(device)
    best, best_d = None, math.inf
    for e in t.get("entries", []):
        if e.get("device") != name or int(e.get("abits", -1)) != int(abits):
            continue
        if int(e.get("N", -1)) != int(N) or int(e.get("K", -1)) != int(K):
            continue
        if (group is not None and e.get("group") not in (None, group)) or \
                (rotate is not None and e.get("rotate") not in (None, rotate)):
            continue
        d = abs(math.log2(max(m, 1)) - math.log2(max(int(e.get("M", 1)), 1)))
        if d < best_d:
            best, best_d = e.get("variant"), d
    return best if best in VARIANTS else default


def write_table(entries: list[dict], path: str | os.PathLike | None = None, default: str = "split") -> Path:
    """Merge ``entries`` (dicts with device, abits, N, K, M, variant, and any timing fields) into the table."""
    p = Path(path) if path is not None else _path()
    old = load_table(p)
    key = lambda e: (e.get("device"), int(e["abits"]), int(e["N"]), int(e["K"]), int(e["M"]))  # noqa: E731
    merged = {key(e): e for e in old.get("entries", [])}
    for e in entries:
        if e.get("variant") not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}: {e}")
        merged[key(e)] = e
    out = {"version": 1, "comment": old.get("comment", ""), "default": default,
           "entries": [merged[k] for k in sorted(merged, key=lambda k: (str(k[0]),) + k[1:])]}
    p.write_text(json.dumps(out, indent=1) + "\n")
    _load.cache_clear()
    return p
