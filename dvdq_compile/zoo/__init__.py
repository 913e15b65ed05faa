"""The model zoo: a small class-conditioned video DiT trained in-repo on procedural clips.

Random-weight transformers say nothing about video quality, so quantization quality is measured on this model:
a ``diffusers.WanTransformer3DModel`` (pixel space, 8 x 16 x 16 RGB clips, width 256, 4 layers) trained by
flow matching on moving shapes (``bench/zoo/train.py``), plus a low-noise expert fine-tuned from it (Wan 2.2 style).

    from dvdq_compile.zoo import load_pipeline, sample_batch, class_names
    pipe = load_pipeline()                       # bench/zoo/wan_zoo{,_low}.safetensors, no network
    videos = pipe([0, 5, 10], steps=20, guidance=3.0, seed=0)   # [3, 3, 8, 16, 16] in [-1, 1]
    real, ids = sample_batch(8, seed=0)          # ground-truth clips of the same distribution

See ``bench/zoo/README.md`` for the model card.
"""

from .data import (
    CLASSES,
    DEFAULT_DATA,
    DataConfig,
    class_names,
    num_classes,
    render_clip,
    sample_batch,
)
from .model import (
    T_TEXT,
    TEXT_DIM,
    WAN_ZOO_CONFIG,
    ZOO_DIR,
    build_model,
    checkpoint_path,
    class_table,
    encode_classes,
    load_checkpoint,
    load_class_table,
    load_expert,
    null_class_id,
    save_checkpoint,
)
from .pipeline import (
    SHIFT,
    ZooPipeline,
    load_pipeline,
    make_scheduler,
    make_wan_pipeline,
    sample,
    wan_pipeline_kwargs,
)

__all__ = [
    "CLASSES",
    "DEFAULT_DATA",
    "DataConfig",
    "class_names",
    "num_classes",
    "render_clip",
    "sample_batch",
    "T_TEXT",
    "TEXT_DIM",
    "WAN_ZOO_CONFIG",
    "ZOO_DIR",
    "build_model",
    "checkpoint_path",
    "class_table",
    "encode_classes",
    "load_checkpoint",
    "load_class_table",
    "load_expert",
    "null_class_id",
    "save_checkpoint",
    "SHIFT",
    "ZooPipeline",
    "load_pipeline",
    "make_scheduler",
    "make_wan_pipeline",
    "sample",
    "wan_pipeline_kwargs",
]
