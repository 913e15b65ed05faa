"""Artifact files: safetensors with a JSON manifest in the metadata, and a readable ``<path>.json`` beside it.

Never pickle: an artifact is tensors plus a manifest (format, recipe settings, per-layer weight fingerprints, the
model fingerprint). Reading checks the format, and that the model fingerprint recomputed from the layers matches
the stored one (a truncated or edited file is refused).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def write_artifact(path: str | Path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """Write ``path`` (safetensors, manifest in its metadata) and ``path.json`` (the manifest, readable)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"manifest": json.dumps(manifest)})
    Path(str(path) + ".json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def read_manifest(f, path: Path, fmt: str, what: str, kind: str) -> dict:
    """The manifest of an open safetensors artifact ``f``, checked to be of format ``fmt``."""
    raw = (f.metadata() or {}).get("manifest")
    if raw is None:
        raise ValueError(f"{what}: {path} is not a {kind} (no manifest)")
    manifest = json.loads(raw)
    if manifest.get("format") != fmt:
        raise ValueError(f"{what}: {path} has format {manifest.get('format')!r}, expected {fmt!r}")
    return manifest


def read_artifact(path: str | Path, fmt: str, what: str, kind: str) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """``(manifest, {tensor name: tensor}, path)`` of an artifact file of format ``fmt``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no file at {path} (a {kind} was expected)")
    with safe_open(str(path), framework="pt") as f:
        manifest = read_manifest(f, path, fmt, what, kind)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return manifest, tensors, path


def check_intact(manifest: dict, recomputed: str, path: Path, what: str) -> None:
    """Refuse a file whose layers do not give the model fingerprint its manifest stores."""
    if recomputed != manifest["fingerprint"]:
        raise ValueError(f"{what}: {path} is corrupt (manifest fingerprint {manifest['fingerprint']} != "
                         f"{recomputed} recomputed from its layers)")
