"""Tiny specs for the Wan family: Wan, VACE, Animate, Animate-2, SkyReels-V2, ChronoEdit, AnyFlow (+FAR), Helios, Motif.

Every config follows diffusers' tester config for the class, widened to ``2 heads x 64`` (inner dim 128; ChronoEdit
``2 x 128``) with FFN dims a multiple of 128, so that every linear inside the transformer blocks has K % 128 == 0.
Inputs give 32-256 video tokens and ~12 text tokens.

ModuleLists judged NOT transformer blocks (so not listed in ``blocks``): Wan-Animate's ``motion_encoder.res_blocks`` /
``motion_encoder.motion_network`` (conv / custom ``MotionLinear`` stacks). Its ``face_adapter`` (a lone
cross-attention, no FFN) is listed: it runs on the video tokens between blocks, with block-sized weights.
"""
from __future__ import annotations

import torch

from . import TinySpec


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen)


def _ts(batch: int, value: int = 500) -> torch.Tensor:
    return torch.tensor([value] * batch)


# Wan 2.1-style block shapes shared by Wan / SkyReels-V2 (inner 2 x 64 = 128, FFN 256).
_WAN = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 32,
}


def _wan_inputs(seed: int = 0, batch: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": _randn(gen, batch, 4, 2, 16, 16),  # 2 x 8 x 8 = 128 tokens
        "timestep": _ts(batch),
        "encoder_hidden_states": _randn(gen, batch, 12, 16),
        "return_dict": False,
    }


def _vace_inputs(seed: int = 0, batch: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": _randn(gen, batch, 16, 2, 16, 16),  # 128 tokens
        "timestep": _ts(batch),
        "encoder_hidden_states": _randn(gen, batch, 12, 32),
        "control_hidden_states": _randn(gen, batch, 48, 2, 16, 16),
        "return_dict": False,
    }


def _animate_inputs(seed: int = 0, batch: int = 1) -> dict:
    # 5 face frames -> face encoder (two stride-2 causal convs) 2 -> +1 pad = 3 motion frames, which must divide
    # the token count and match the 3 latent frames (2 pose frames + the reference frame): 3 x 8 x 8 = 192 tokens.
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": _randn(gen, batch, 12, 3, 16, 16),
        "timestep": _ts(batch),
        "encoder_hidden_states": _randn(gen, batch, 12, 16),
        "encoder_hidden_states_image": _randn(gen, batch, 12, 16),
        "pose_hidden_states": _randn(gen, batch, 4, 2, 16, 16),
        "face_pixel_values": _randn(gen, batch, 3, 5, 16, 16),
        "return_dict": False,
    }


def _animate2_inputs(seed: int = 0, batch: int = 1) -> dict:
    # The reference pass (kv_cache_mode="extract"): dense self-attention, fills a fresh KV cache. The generation pass
    # ("cached") needs a populated cache and a flex BlockMask, so it is not the catalog's forward.
    from diffusers.models.transformers.transformer_wan_animate_2 import (
        WanAnimate2KVCache,
    )

    gen = torch.Generator().manual_seed(seed)
    frames, h, w = 2, 16, 16  # 2 x 8 x 8 = 128 tokens per sample
    return {
        "hidden_states": [_randn(gen, 16, frames, h, w) for _ in range(batch)],
        "timestep": torch.tensor([500.0] * batch),
        "encoder_hidden_states": [_randn(gen, 12, 32) for _ in range(batch)],
        "condition_latents": [_randn(gen, 20, frames, h, w) for _ in range(batch)],
        "encoder_hidden_states_image": _randn(gen, batch, 4, 1280),  # MLPProj hardcodes the CLIP width 1280
        "kv_cache": WanAnimate2KVCache(2),
        "kv_cache_mode": "extract",
        "seq_len": frames * (h // 2) * (w // 2),
        "offset_grid_sizes": torch.tensor([[frames, h // 2, w // 2]], dtype=torch.long),
        "return_dict": False,
    }


def _chronoedit_inputs(seed: int = 0, batch: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": _randn(gen, batch, 16, 2, 16, 16),  # 2 frames: the temporal-skip RoPE path; 128 tokens
        "timestep": _ts(batch),
        "encoder_hidden_states": _randn(gen, batch, 12, 32),
        "return_dict": False,
    }


def _anyflow_inputs(seed: int = 0, batch: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    frames = 2
    return {
        "hidden_states": _randn(gen, batch, frames, 4, 16, 16),  # (B, F, C, H, W); 128 tokens
        "timestep": torch.full((batch, frames), 500.0),
        "r_timestep": torch.full((batch, frames), 250.0),
        "encoder_hidden_states": _randn(gen, batch, 12, 16),
        "return_dict": False,
    }


_FAR_INIT = {
    "patch_size": (1, 2, 2),
    "compressed_patch_size": (1, 4, 4),
    "full_chunk_limit": 3,
    "num_attention_heads": 2,
    "attention_head_dim": 64,
    "in_channels": 4,
    "out_channels": 4,
    "text_dim": 16,
    "freq_dim": 256,
    "ffn_dim": 256,
    "num_layers": 2,
    "cross_attn_norm": True,
    "rope_max_seq_len": 32,
    "gate_value": 0.25,
    "deltatime_type": "r",
}


def _anyflow_far_inputs(seed: int = 0, batch: int = 1) -> dict:
    # Four 1-frame chunks with full_chunk_limit=3: the first chunk goes through the compressed (1, 4, 4) patch
    # embedding (16 tokens), the last three are full-resolution (3 x 64) -> 208 tokens, padded to 256 for flex.
    # The causal BlockMask is pre-built here (as diffusers' compile tester does): built inside forward it breaks the
    # graph (create_block_mask(_compile=False)).
    from diffusers.models.transformers.transformer_anyflow_far import (
        _build_anyflow_far_causal_block_mask,
    )

    gen = torch.Generator().manual_seed(seed)
    chunks = [1, 1, 1, 1]
    frames, h, w = sum(chunks), 16, 16
    mask = _build_anyflow_far_causal_block_mask(
        chunk_partition=chunks,
        height=h,
        width=w,
        patch_size=_FAR_INIT["patch_size"],
        compressed_patch_size=_FAR_INIT["compressed_patch_size"],
        full_chunk_limit=_FAR_INIT["full_chunk_limit"],
        mode="train",
        has_clean_context=False,
    )
    return {
        "hidden_states": _randn(gen, batch, frames, 4, h, w),
        "timestep": torch.full((batch, frames), 500.0),
        "r_timestep": torch.full((batch, frames), 250.0),
        "encoder_hidden_states": _randn(gen, batch, 12, 16),
        "chunk_partition": chunks,
        "attention_mask": mask,
        "return_dict": False,
    }


def _helios_inputs(seed: int = 0, batch: int = 1) -> dict:
    # 2 noisy frames (128 tokens) + multi-term memory: short 1 frame (64), mid 1 frame -> (2, 4, 4) patch (16),
    # long 4 frames -> (4, 8, 8) patch (4): 212 tokens in the blocks.
    gen = torch.Generator().manual_seed(seed)
    c, h, w = 4, 16, 16

    def idx(*frames: int) -> torch.Tensor:
        return torch.tensor([list(frames)] * batch, dtype=torch.float32)

    return {
        "hidden_states": _randn(gen, batch, c, 2, h, w),
        "timestep": _ts(batch),
        "encoder_hidden_states": _randn(gen, batch, 12, 16),
        "indices_hidden_states": idx(6, 7),
        "indices_latents_history_short": idx(5),
        "indices_latents_history_mid": idx(4),
        "indices_latents_history_long": idx(0, 1, 2, 3),
        "latents_history_short": _randn(gen, batch, c, 1, h, w),
        "latents_history_mid": _randn(gen, batch, c, 1, h, w),
        "latents_history_long": _randn(gen, batch, c, 4, h, w),
        "return_dict": False,
    }


def _motif_inputs(seed: int = 0, batch: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": _randn(gen, batch, 33, 2, 16, 16),  # patch 2: 2 x 8 x 8 = 128 tokens
        "timestep": _ts(batch),
        "encoder_hidden_states": _randn(gen, batch, 12, 32),
        "return_dict": False,
    }


SPECS: dict[str, TinySpec] = {
    "WanTransformer3DModel": TinySpec(
        cls="WanTransformer3DModel",
        init=dict(_WAN),
        inputs=_wan_inputs,
        note="heads 2 x 64 (was 2 x 12) and ffn_dim 256 (was 32) so block linears have K in {128, 256}.",
        blocks=("blocks",),
    ),
    "WanVACETransformer3DModel": TinySpec(
        cls="WanVACETransformer3DModel",
        init={
            **_WAN,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 32,
            "vace_layers": [0, 1],
            "vace_in_channels": 48,
        },
        inputs=_vace_inputs,
        note="heads 2 x 64, ffn 256 (K % 128 == 0); 2 main blocks with vace_layers [0, 1] instead of 4 with [0, 2].",
        blocks=("blocks", "vace_blocks"),
    ),
    "WanAnimateTransformer3DModel": TinySpec(
        cls="WanAnimateTransformer3DModel",
        init={
            **_WAN,
            "in_channels": 12,
            "latent_channels": 4,
            "image_dim": 16,
            "motion_encoder_channel_sizes": {"4": 16, "8": 16, "16": 16},
            "motion_encoder_size": 16,
            "motion_style_dim": 8,
            "motion_dim": 4,
            "motion_encoder_dim": 16,
            "face_encoder_hidden_dim": 16,
            "face_encoder_num_heads": 2,
            "inject_face_latents_blocks": 2,
        },
        inputs=_animate_inputs,
        note="heads 2 x 64, ffn 256; 5 face frames / 3 latent frames (192 tokens) instead of 77 / 21 (1344 tokens).",
        # face_adapter: cross-attention of the video tokens to the face features between blocks (5120x5120
        # linears in the real model), quantized like the blocks' own cross-attention
        blocks=("blocks", "face_adapter"),
    ),
    "WanAnimate2Transformer3DModel": TinySpec(
        cls="WanAnimate2Transformer3DModel",
        init={
            "patch_size": (1, 2, 2),
            "text_len": 16,
            "in_dim": 36,
            "dim": 128,
            "ffn_dim": 256,
            "freq_dim": 64,
            "text_dim": 32,
            "out_dim": 16,
            "num_heads": 2,
            "num_layers": 2,
            "cross_attn_norm": True,
            "use_img_emb": True,
        },
        inputs=_animate2_inputs,
        note="tester dims (already 128/256) with 2 x 64 heads (was 4 x 32); 8 x 8 patch grid (128 tokens, was 8), "
        "reference pass (extract) only; list inputs and a KV-cache object.",
        blocks=("blocks",),
    ),
    "SkyReelsV2Transformer3DModel": TinySpec(
        cls="SkyReelsV2Transformer3DModel",
        init=dict(_WAN),
        inputs=_wan_inputs,
        note="heads 2 x 64 (was 2 x 12) and ffn_dim 256 (was 32) so block linears have K in {128, 256}.",
        blocks=("blocks",),
    ),
    "ChronoEditTransformer3DModel": TinySpec(
        cls="ChronoEditTransformer3DModel",
        init={
            "patch_size": (1, 2, 2),
            "num_attention_heads": 2,
            "attention_head_dim": 128,
            "in_channels": 16,
            "out_channels": 16,
            "text_dim": 32,
            "freq_dim": 16,
            "ffn_dim": 512,
            "num_layers": 2,
            "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads",
            "eps": 1e-06,
            "image_dim": None,
            "added_kv_proj_dim": None,
            "rope_max_seq_len": 64,
            "pos_embed_seq_len": None,
            "rope_temporal_skip_len": 8,
        },
        inputs=_chronoedit_inputs,
        note="heads 2 x 128 (was 2 x 8; head_dim 128 keeps the RoPE table and its split consistent, 64 would not), "
        "ffn 512; 16 x 16 latents (128 tokens, was 32).",
        blocks=("blocks",),
    ),
    "AnyFlowTransformer3DModel": TinySpec(
        cls="AnyFlowTransformer3DModel",
        init={k: v for k, v in _FAR_INIT.items() if k not in ("compressed_patch_size", "full_chunk_limit")},
        inputs=_anyflow_inputs,
        note="heads 2 x 64 (was 2 x 12) and ffn_dim 256 (was 32) so block linears have K in {128, 256}.",
        blocks=("blocks",),
    ),
    "AnyFlowFARTransformer3DModel": TinySpec(
        cls="AnyFlowFARTransformer3DModel",
        init=dict(_FAR_INIT),
        inputs=_anyflow_far_inputs,
        note="heads 2 x 64, ffn 256; chunks [1, 1, 1, 1] (one compressed chunk, was [2, 2] all full) and a pre-built "
        "causal BlockMask; self-attention is flex attention.",
        blocks=("blocks",),
    ),
    "HeliosTransformer3DModel": TinySpec(
        cls="HeliosTransformer3DModel",
        init={
            **{k: v for k, v in _WAN.items() if k != "rope_max_seq_len"},
            "rope_dim": (24, 20, 20),
            "has_multi_term_memory_patch": True,
            "guidance_cross_attn": True,
            "zero_history_timestep": True,
            "is_amplify_history": False,
        },
        inputs=_helios_inputs,
        note="heads 2 x 64 with rope_dim (24, 20, 20) (was 2 x 12, (4, 4, 4)), ffn 256; distinct history indices.",
        blocks=("blocks",),
    ),
    "MotifVideoTransformer3DModel": TinySpec(
        cls="MotifVideoTransformer3DModel",
        init={
            "in_channels": 33,
            "out_channels": 16,
            "num_attention_heads": 2,
            "attention_head_dim": 64,
            "num_layers": 1,
            "num_single_layers": 1,
            "num_decoder_layers": 0,
            "mlp_ratio": 4.0,
            "patch_size": 2,
            "patch_size_t": 1,
            "qk_norm": "rms_norm",
            "norm_type": "layer_norm",
            "text_embed_dim": 32,
            "image_embed_dim": 4,
            "rope_theta": 256.0,
            "rope_axes_dim": (16, 24, 24),
            "enable_text_cross_attention_dual": False,
            "enable_text_cross_attention_single": False,
        },
        inputs=_motif_inputs,
        note="heads 2 x 64 with rope (16, 24, 24) (was 2 x 12, (4, 4, 4)); patch 2 and 2 x 16 x 16 latents "
        "(128 tokens) instead of patch 1 over 9 x 16 x 16 (2304).",
        blocks=("transformer_blocks", "single_transformer_blocks"),
    ),
}
