"""The zoo's small video DiT: a ``diffusers.WanTransformer3DModel`` in pixel space, class-conditioned.

* ``WAN_ZOO_CONFIG`` -- the constructor kwargs (3 pixel channels in/out, patch (1, 2, 2), width 256 = 2 heads x 128,
  FFN 1024, 4 layers, text_dim 128, freq_dim 256, cross-attention norm, RMS qk-norm across heads). Every linear in a
  transformer block has K in {256, 1024}, a multiple of 128.
* Conditioning: a class id ``c`` becomes ``encoder_hidden_states = class_table[c]`` of shape ``[T_TEXT=4, 128]``.
  The table ``[num_classes + 1, 4, 128]`` is fixed (seeded Gaussian, not learned); its LAST row is the null /
  unconditional embedding (all zeros) used for classifier-free guidance (trained with 10 % label dropout).
  The table is also stored in every checkpoint (key ``zoo.class_table``) and the stored copy wins on load.
* Checkpoints live in ``bench/zoo/``, two versions (``VERSIONS``; default ``DEFAULT_VERSION`` = v2): v2
  ``wan_zoo_v2`` / ``wan_zoo_v2_low`` trained with real-DiT statistics imposed (zoo/structure.py), v1 ``wan_zoo`` /
  ``wan_zoo_low`` with uniform weights (the control). Each: the main model (all noise levels; the high-noise expert
  in the two-expert setup) and a low-noise expert fine-tuned on sigma < 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import num_classes

__all__ = [
    "WAN_ZOO_CONFIG",
    "T_TEXT",
    "TEXT_DIM",
    "CLASS_TABLE_SEED",
    "ZOO_DIR",
    "EXPERTS",
    "VERSIONS",
    "DEFAULT_VERSION",
    "expert_stems",
    "build_model",
    "class_table",
    "null_class_id",
    "encode_classes",
    "checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "load_expert",
    "load_class_table",
]

TEXT_DIM = 128
T_TEXT = 4
CLASS_TABLE_SEED = 20250101

WAN_ZOO_CONFIG: dict = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 128,
    "in_channels": 3,
    "out_channels": 3,
    "text_dim": TEXT_DIM,
    "freq_dim": 256,
    "ffn_dim": 1024,
    "num_layers": 4,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

ZOO_DIR = Path(__file__).resolve().parents[2] / "bench" / "zoo"
# v1: kaiming-uniform weights, no outlier channels (the "uniform weights" control); v2: trained with the structure
# of real video DiTs imposed (zoo/structure.py). Both: (high-noise / main expert, low-noise expert).
VERSIONS = {"v1": ("wan_zoo", "wan_zoo_low"), "v2": ("wan_zoo_v2", "wan_zoo_v2_low")}
DEFAULT_VERSION = "v2"
# expert names: the aliases "high"/"main" and "low" mean the default version's experts; every stem names itself
EXPERTS = {"high": VERSIONS[DEFAULT_VERSION][0], "main": VERSIONS[DEFAULT_VERSION][0],
           "low": VERSIONS[DEFAULT_VERSION][1], **{s: s for stems in VERSIONS.values() for s in stems}}
TABLE_KEY = "zoo.class_table"
TRAIN_CMD = {
    "wan_zoo": "nice -n 19 python3 bench/zoo/train.py --expert main --steps 1300 --minutes 48",
    "wan_zoo_low": "nice -n 19 python3 bench/zoo/train.py --expert low --init bench/zoo/wan_zoo.safetensors "
    "--steps 400 --minutes 11",
    "wan_zoo_v2": "python3 bench/zoo/train.py --expert main --structure v2 --name wan_zoo_v2 --steps 2600 --minutes 75",
    "wan_zoo_v2_low": "python3 bench/zoo/train.py --expert low --init bench/zoo/wan_zoo_v2.safetensors "
    "--name wan_zoo_v2_low --steps 400 --minutes 8",
}


def expert_stems(version: str = DEFAULT_VERSION) -> tuple[str, str]:
    """``(high-noise stem, low-noise stem)`` of a zoo version (``"v1"`` or ``"v2"``)."""
    if version not in VERSIONS:
        raise ValueError(f"zoo version {version!r}: expected one of {sorted(VERSIONS)}")
    return VERSIONS[version]


def build_model(config: dict | None = None):
    """A freshly initialised ``WanTransformer3DModel`` (fp32, CPU, no network). ``config`` overrides keys of
    :data:`WAN_ZOO_CONFIG`."""
    from diffusers import WanTransformer3DModel

    cfg = dict(WAN_ZOO_CONFIG)
    if config:
        cfg.update(config)
    cfg["patch_size"] = tuple(cfg["patch_size"])
    return WanTransformer3DModel(**cfg)


def null_class_id(n_classes: int | None = None) -> int:
    """Index of the unconditional row of the class table (= number of classes)."""
    return num_classes() if n_classes is None else int(n_classes)


def class_table(seed: int = CLASS_TABLE_SEED, n_classes: int | None = None) -> torch.Tensor:
    """The fixed class-embedding table ``[n_classes + 1, T_TEXT, TEXT_DIM]`` (float32); last row = null (zeros)."""
    n = num_classes() if n_classes is None else int(n_classes)
    g = torch.Generator(device="cpu").manual_seed(seed)
    table = torch.randn(n + 1, T_TEXT, TEXT_DIM, generator=g, dtype=torch.float32)
    table[n] = 0.0
    return table


def encode_classes(class_ids, table: torch.Tensor | None = None) -> torch.Tensor:
    """``encoder_hidden_states [B, T_TEXT, TEXT_DIM]`` for class ids ``[B]`` (use ``null_class_id()`` for uncond)."""
    table = class_table() if table is None else table
    ids = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1)
    return table[ids.to(table.device)]


# --------------------------------------------------------------------------------------------- checkpoints
def checkpoint_path(name: str) -> Path:
    """``bench/zoo/<name>.safetensors`` for an expert name (``high``/``main`` and ``low``: the default version's
    experts; or a stem of :data:`VERSIONS`, e.g. ``wan_zoo`` for v1) or the path itself if ``name`` is a path."""
    if name in EXPERTS:
        return ZOO_DIR / f"{EXPERTS[name]}.safetensors"
    p = Path(name)
    if p.suffix != ".safetensors":
        p = ZOO_DIR / f"{name}.safetensors"
    return p


def save_checkpoint(model, path, table: torch.Tensor, *, dtype=torch.float16, metadata: dict | None = None) -> Path:
    """Write the transformer weights (``dtype``) + the class table (fp32) + the config as safetensors metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    sd[TABLE_KEY] = table.detach().to("cpu", torch.float32).contiguous()
    cfg = dict(model.config)
    meta = {"config": json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")})}
    for k, v in (metadata or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.chmod(0o644)
    tmp.replace(path)
    return path


def _missing(path: Path, name: str) -> FileNotFoundError:
    stem = EXPERTS.get(name, Path(name).stem)
    cmd = TRAIN_CMD.get(stem, TRAIN_CMD["wan_zoo"])
    return FileNotFoundError(
        f"zoo checkpoint not found: {path}. Train it first (from the repo root): `{cmd}` "
        f"(see bench/zoo/README.md)."
    )


def load_checkpoint(path, *, dtype=torch.float32, device="cpu"):
    """``(model, class_table, metadata)`` from a zoo safetensors file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise _missing(path, path.stem)
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    cfg = json.loads(meta["config"]) if "config" in meta else dict(WAN_ZOO_CONFIG)
    allowed = set(WAN_ZOO_CONFIG) | {"image_dim", "added_kv_proj_dim", "pos_embed_seq_len"}
    cfg = {k: v for k, v in cfg.items() if k in allowed}
    sd = load_file(str(path))
    table = sd.pop(TABLE_KEY, None)
    if table is None:
        table = class_table()
    model = build_model(cfg)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    if dtype != torch.float32:
        model = model.to(dtype=dtype)  # diffusers warns that rope / time_embedder / norms prefer fp32
    model = model.to(device=device).eval().requires_grad_(False)
    return model, table.to(torch.float32), meta


def load_expert(name: str = "high", *, dtype=torch.float32, device="cpu"):
    """The trained transformer for ``name`` (an :data:`EXPERTS` name: ``high``/``low`` = the default version) or a path to a
    ``.safetensors`` file; fp32 eval mode, grads off. Raises ``FileNotFoundError`` (naming the path and the
    training command) if the checkpoint has not been trained."""
    path = checkpoint_path(name)
    if not path.is_file():
        raise _missing(path, name)
    return load_checkpoint(path, dtype=dtype, device=device)[0]


def load_class_table(name: str = "high") -> torch.Tensor:
    """The class table stored with a checkpoint (falls back to :func:`class_table` if the file is absent)."""
    path = checkpoint_path(name)
    if not path.is_file():
        return class_table()
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(TABLE_KEY).to(torch.float32) if TABLE_KEY in f.keys() else class_table()
