"""Tiny specs of the HunyuanVideo family and its neighbours (Kandinsky 5/6, Mochi, EasyAnimate, JoyImage).

Widths are 128 (2 heads x 64, or 3 x 128 for Mochi) so every transformer-block linear has K a multiple of 128.
Block lists judged NOT transformer blocks: none of these models has any other ModuleList of blocks (Framepack's
history/clean embedders are convs, Hunyuan 1.5's ByT5/image projections are plain MLPs outside any list).
"""
from __future__ import annotations

import torch

from . import TinySpec


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g)


def _t(batch: int, value: float = 500.0) -> torch.Tensor:
    return torch.full((batch,), value)


# --------------------------------------------------------------------------------------------------------------------
# HunyuanVideo
# --------------------------------------------------------------------------------------------------------------------

_HUNYUAN = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=1,
                num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(16, 24, 24), image_condition_type=None)


def _hunyuan_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 4, 2, 8, 8),  # 2*8*8 = 128 video tokens
                timestep=_t(batch), encoder_hidden_states=_randn(g, batch, 12, 16),
                encoder_attention_mask=torch.ones(batch, 12), pooled_projections=_randn(g, batch, 8),
                guidance=_t(batch, 6000.0), return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# HunyuanVideo Framepack
# --------------------------------------------------------------------------------------------------------------------

_FRAMEPACK = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=1,
                  num_single_layers=1, num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True,
                  text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(16, 24, 24), image_condition_type=None,
                  has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True)


def _framepack_inputs(seed: int = 0, batch: int = 1) -> dict:
    # Frame indices laid out as the F1 pipeline does: prefix(1) | 4x(8) | 2x(2) | 1x(1) | latents(3).
    # Tokens: latents 3*4*4 = 48, clean 2*4*4 = 32, 2x history 1*2*2 = 4, 4x history 2*1*1 = 2 -> 86.
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 4, 3, 8, 8), timestep=_t(batch),
                encoder_hidden_states=_randn(g, batch, 12, 16), encoder_attention_mask=torch.ones(batch, 12),
                pooled_projections=_randn(g, batch, 8), image_embeds=_randn(g, batch, 12, 16),
                indices_latents=torch.tensor([12, 13, 14]), guidance=_t(batch, 6000.0),
                latents_clean=_randn(g, batch, 4, 2, 8, 8), indices_latents_clean=torch.tensor([0, 11]),
                latents_history_2x=_randn(g, batch, 4, 2, 8, 8), indices_latents_history_2x=torch.tensor([9, 10]),
                latents_history_4x=_randn(g, batch, 4, 8, 8, 8), indices_latents_history_4x=torch.arange(1, 9),
                return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5
# --------------------------------------------------------------------------------------------------------------------

_HUNYUAN15 = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64, num_layers=2,
                  num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
                  text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(16, 24, 24), target_size=16,
                  task_type="t2v")


def _hunyuan15_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 4, 2, 8, 8), timestep=_t(batch),
                encoder_hidden_states=_randn(g, batch, 12, 16), encoder_attention_mask=torch.ones(batch, 12),
                encoder_hidden_states_2=_randn(g, batch, 4, 8), encoder_attention_mask_2=torch.ones(batch, 4),
                image_embeds=torch.zeros(batch, 3, 12),  # all zero = t2v, as the pipeline passes it
                return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# Kandinsky 5
# --------------------------------------------------------------------------------------------------------------------

_KANDINSKY5 = dict(in_visual_dim=16, in_text_dim=32, in_text_dim2=16, time_dim=128, out_visual_dim=16,
                   patch_size=(1, 2, 2), model_dim=128, ff_dim=256, num_text_blocks=1, num_visual_blocks=2,
                   axes_dims=(16, 24, 24), visual_cond=False, attention_type="regular")


def _kandinsky5_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 2, 16, 16, 16),  # (B, T, H, W, C): 2*8*8 = 128 tokens
                encoder_hidden_states=_randn(g, batch, 12, 32), timestep=_t(batch),
                pooled_projections=_randn(g, batch, 16),
                visual_rope_pos=[torch.arange(2), torch.arange(8), torch.arange(8)],
                text_rope_pos=torch.arange(12), return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# Kandinsky 6 (video + audio) and Kandinsky 6 SR
# --------------------------------------------------------------------------------------------------------------------

_KANDINSKY6 = dict(in_visual_dim=4, out_visual_dim=4, in_text_dim=32, in_text_dim2=16, time_dim=128,
                   patch_size=(1, 2, 2), model_dim=128, ff_dim=256, num_text_blocks=1, num_visual_blocks=2,
                   axes_dims=(16, 24, 24), visual_cond=True, in_audio_dim=20, out_audio_dim=20,
                   text_token_padding=True, ca_rope=True, cross_gates=True, fix_modulation=True)


def _kandinsky6_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 2, 16, 16, 2 * 4 + 1),  # visual_cond: noisy | cond | mask
                encoder_hidden_states=_randn(g, batch, 12, 32), pooled_projections=_randn(g, batch, 16),
                timestep=_t(batch), audio_hidden_states=_randn(g, batch, 16, 20), return_dict=False)


_KANDINSKY6_SR = dict(in_visual_dim=4, out_visual_dim=4, time_dim=128, patch_size=(1, 1, 1), model_dim=128,
                      ff_dim=256, num_visual_blocks=2, axes_dims=(16, 24, 24))


def _kandinsky6_sr_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    # NABLA needs the token grid divisible by 8: 2 x 8 x 8 = 128 tokens (two 64-token attention blocks).
    return dict(hidden_states=_randn(g, batch, 2, 8, 8, 2 * 4 + 1), timestep=_t(batch), return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# Mochi
# --------------------------------------------------------------------------------------------------------------------

# SwiGLU inner width is (8 * dim) // 3, a multiple of 128 only when dim is a multiple of 384 (as in Mochi: 3072).
_MOCHI = dict(patch_size=2, num_attention_heads=3, attention_head_dim=128, num_layers=2, pooled_projection_dim=384,
              in_channels=4, out_channels=None, qk_norm="rms_norm", text_embed_dim=32, time_embed_dim=32,
              activation_fn="swiglu", max_sequence_length=16)


def _mochi_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 4, 2, 16, 16), encoder_hidden_states=_randn(g, batch, 12, 32),
                timestep=_t(batch), encoder_attention_mask=torch.ones(batch, 12, dtype=torch.bool),
                return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# EasyAnimate
# --------------------------------------------------------------------------------------------------------------------

_EASYANIMATE = dict(attention_head_dim=64, num_attention_heads=2, in_channels=4, mmdit_layers=1, num_layers=2,
                    out_channels=4, patch_size=2, sample_height=60, sample_width=90, text_embed_dim=32,
                    time_embed_dim=128, time_position_encoding_type="3d_rope", timestep_activation_fn="silu")


def _easyanimate_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=_randn(g, batch, 4, 2, 16, 16), timestep=_t(batch),
                encoder_hidden_states=_randn(g, batch, 12, 32), return_dict=False)


# --------------------------------------------------------------------------------------------------------------------
# JoyImage Edit / Edit Plus
# --------------------------------------------------------------------------------------------------------------------

_JOYIMAGE = dict(patch_size=[1, 2, 2], in_channels=16, hidden_size=128, num_attention_heads=2, text_dim=32,
                 num_layers=2, rope_dim_list=[16, 24, 24], theta=256)


def _joyimage_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    # Multi-item (B, items, C, T, H, W) as the edit pipeline sends it: reference image + target, 2*8*8 = 128 tokens.
    return dict(hidden_states=_randn(g, batch, 2, 16, 1, 16, 16), timestep=_t(batch),
                encoder_hidden_states=_randn(g, batch, 12, 32), return_dict=False)


def _joyimage_plus_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    # Pre-patchified (B, max_patches, C, pt, ph, pw): target 1x8x8 + reference 1x6x8 = 112 patches, padded to 128.
    return dict(hidden_states=_randn(g, batch, 128, 16, 1, 2, 2), timestep=_t(batch),
                encoder_hidden_states=_randn(g, batch, 12, 32), encoder_hidden_states_mask=torch.ones(batch, 12),
                shape_list=[[(1, 8, 8), (1, 6, 8)] for _ in range(batch)], return_dict=False)


SPECS: dict[str, TinySpec] = {
    "HunyuanVideoTransformer3DModel": TinySpec(
        "HunyuanVideoTransformer3DModel", _HUNYUAN, _hunyuan_inputs,
        note="head_dim 10 -> 64 (rope 16/24/24) for K=128; 2x8x8 latent instead of 1x16x16.",
        blocks=("transformer_blocks", "single_transformer_blocks", "context_embedder.token_refiner.refiner_blocks")),
    "HunyuanVideoFramepackTransformer3DModel": TinySpec(
        "HunyuanVideoFramepackTransformer3DModel", _FRAMEPACK, _framepack_inputs,
        note="head_dim 10 -> 64 (rope 16/24/24) for K=128; 8x8 latents and F1-style frame indices instead of ones.",
        blocks=("transformer_blocks", "single_transformer_blocks", "context_embedder.token_refiner.refiner_blocks")),
    "HunyuanVideo15Transformer3DModel": TinySpec(
        "HunyuanVideo15Transformer3DModel", _HUNYUAN15, _hunyuan15_inputs,
        note="head_dim 8 -> 64 (rope 16/24/24) for K=128; 2x8x8 latent, 12 text tokens.",
        blocks=("transformer_blocks", "context_embedder.token_refiner.refiner_blocks")),
    "Kandinsky5Transformer3DModel": TinySpec(
        "Kandinsky5Transformer3DModel", _KANDINSKY5, _kandinsky5_inputs,
        note="No transformer tester (config from the pipeline test): model_dim 16 -> 128, time_dim 16 -> 128 "
             "(block modulation K), ff 256, axes 16/24/24; forward returns a bare tensor with return_dict=False.",
        blocks=("text_transformer_blocks", "visual_transformer_blocks")),
    "Kandinsky6Transformer3DModel": TinySpec(
        "Kandinsky6Transformer3DModel", _KANDINSKY6, _kandinsky6_inputs,
        note="No tester: model_dim/time_dim 128, ff 256, axes 16/24/24; released-checkpoint flags (ca_rope, "
             "cross_gates, fix_modulation) on and audio latents passed so the fused audio path runs too.",
        blocks=("video_text_transformer_blocks", "audio_text_transformer_blocks", "visual_transformer_blocks")),
    "Kandinsky6SRTransformer3DModel": TinySpec(
        "Kandinsky6SRTransformer3DModel", _KANDINSKY6_SR, _kandinsky6_sr_inputs,
        note="No tester: model_dim/time_dim 128, ff 256, axes 16/24/24; attention is always flex (NABLA BlockMask), "
             "so the 8x8 token grid is the smallest allowed.",
        blocks=("visual_transformer_blocks",)),
    "MochiTransformer3DModel": TinySpec(
        "MochiTransformer3DModel", _MOCHI, _mochi_inputs,
        note="dim 16 -> 384 (3 heads x 128) and pooled (context) dim 16 -> 384: SwiGLU inner (8*dim)//3 is a "
             "multiple of 128 only for dims that are multiples of 384; 12 text tokens.",
        blocks=("transformer_blocks",)),
    "EasyAnimateTransformer3DModel": TinySpec(
        "EasyAnimateTransformer3DModel", _EASYANIMATE, _easyanimate_inputs,
        note="head_dim 16 -> 64, time_embed_dim 8 -> 128 (block AdaLN K); mmdit_layers 2 -> 1 so one block of each "
             "kind (MMDiT and shared-weight) runs.",
        blocks=("transformer_blocks",)),
    "JoyImageEditTransformer3DModel": TinySpec(
        "JoyImageEditTransformer3DModel", _JOYIMAGE, _joyimage_inputs,
        note="hidden 32 -> 128 (rope 16/24/24); 2-item (reference + target) 6-D input as the edit pipeline sends.",
        blocks=("double_blocks",)),
    "JoyImageEditPlusTransformer3DModel": TinySpec(
        "JoyImageEditPlusTransformer3DModel", _JOYIMAGE, _joyimage_plus_inputs,
        note="hidden 32 -> 128 (rope 16/24/24); two components (8x8 + 6x8 patches) padded to 128 with a text mask.",
        blocks=("double_blocks",)),
}
