"""Which weights an artifact belongs to: per-layer weight fingerprints, and full checksums.

An artifact (a calibration, a trained estimator) describes one model's weights. It stores a fingerprint of every
layer's weight, and the backend refuses it for a model whose weights differ (another checkpoint, an edit) with an
error naming the layer.
"""
from __future__ import annotations

import hashlib

import torch

from ..state import STATE

_SAMPLE = 4096  # weight elements hashed per layer: enough to tell models apart, cheap on a 14B model


def weight_fingerprint(w: torch.Tensor) -> str:
    """A short hash of a weight's shape, and of up to 4096 evenly spaced elements (as fp32 bytes).

    Sampling keeps fingerprinting a full-size model to milliseconds; any re-initialisation, fine-tune or a
    different checkpoint changes the sampled values. The hash is of values, so it is the same on CPU and GPU.
    A weight whose storage ``free_weights`` released answers with the fingerprint taken before the release.
    """
    info = STATE.freed.get(w)
    if info is not None:
        return info.fingerprint
    flat = w.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    sample = flat[::step][:_SAMPLE].to(device="cpu", dtype=torch.float32).contiguous()
    h = hashlib.sha256(repr(tuple(w.shape)).encode())
    h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(layers: dict[str, str]) -> str:
    """The fingerprint of a set of layers: a hash of the sorted (name, weight fingerprint) pairs."""
    h = hashlib.sha256()
    for name in sorted(layers):
        h.update(f"{name}={layers[name]};".encode())
    return h.hexdigest()[:16]


def check_fingerprint(weights: dict[str, str], name: str, w: torch.Tensor, what: str, fix: str) -> None:
    """Raise ``ValueError`` if ``w`` is not the weight layer ``name`` had when the artifact was made.

    ``weights``: layer -> fingerprint (a layer not listed is not checked); ``what``: "<artifact> was made" (or
    "was trained"), the start of the message; ``fix``: what to do."""
    want = weights.get(name)
    if want is None:
        return
    got = weight_fingerprint(w)
    if got != want:
        raise ValueError(f"{what} for a different model: layer {name!r} has weight fingerprint {got}, the "
                         f"artifact expects {want}. {fix}")


def checksum(p: torch.Tensor) -> tuple[int, int]:
    """Two int64 sums over every element's bits (plain and position-weighted), on the tensor's device: any edit
    of the values changes them (barring a deliberate collision), unlike a sampled fingerprint."""
    v = p.detach().reshape(-1)
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[v.element_size()]
    i = v.view(ints).to(torch.int64)
    pos = torch.arange(1, i.numel() + 1, device=i.device, dtype=torch.int64)
    return int(i.sum()), int((i * pos).sum())  # int64 wrap-around is deterministic: fine for a checksum
