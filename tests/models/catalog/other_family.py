"""Tiny specs for CogVideoX, ConsisID, Cosmos, Latte and Allegro (see ``TinySpec``).

Every config is widened so that the linears inside the transformer blocks have K (in_features) a multiple of 128:
inner dims are 2 heads x 64 = 128 (Allegro: 4 x 96 = 384, to keep its real head dim, which its 3-axis RoPE
splits in thirds), FFNs 2-4 x inner, and the time-embedding / cross-attention dims feeding block linears are 128.
Inputs: 128 video tokens, 12 text tokens.
"""
from __future__ import annotations

import torch

from . import TinySpec

_TEXT = 12  # text tokens


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


# ---------------------------------------------------------------------------------------------------------------
# CogVideoX (1.0 layout: sin-cos positional embedding added in the patch embedder, no RoPE)
# ---------------------------------------------------------------------------------------------------------------
_COGVIDEOX = dict(
    num_attention_heads=2,
    attention_head_dim=64,
    in_channels=4,
    out_channels=4,
    time_embed_dim=128,  # K of every block's norm1/norm2 (CogVideoXLayerNormZero) linear
    text_embed_dim=16,
    num_layers=2,
    sample_width=16,
    sample_height=16,
    sample_frames=5,  # (2 latent frames - 1) * 4 + 1: the precomputed positional embedding is used as is
    patch_size=2,
    patch_size_t=None,
    temporal_compression_ratio=4,
    max_text_seq_length=_TEXT,  # the positional embedding covers exactly max_text_seq_length text rows
)


def _cogvideox_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=_randn(g, batch, 2, 4, 16, 16),  # (B, F, C, H, W): 2 x 8 x 8 = 128 tokens
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        timestep=torch.tensor([500] * batch),
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# ConsisID (CogVideoX + identity-preserving face branch)
# ---------------------------------------------------------------------------------------------------------------
_CONSISID = dict(
    _COGVIDEOX,
    num_layers=2,
    cross_attn_interval=1,
    is_kps=False,
    is_train_face=True,
    cross_attn_dim_head=64,
    cross_attn_num_heads=2,
    LFE_id_dim=2,
    LFE_vit_dim=2,
    LFE_depth=5,
    LFE_dim_head=8,
    LFE_num_heads=2,
    LFE_num_id_token=1,
    LFE_num_querie=1,
    LFE_output_dim=85,  # must equal int(inner_dim * 2 / 3), the K of perceiver_cross_attention[*].to_kv
    LFE_ff_mult=1,
    LFE_num_scale=1,
)
del _CONSISID["patch_size_t"]  # ConsisID has no temporal patching argument


def _consisid_inputs(seed: int = 0, batch: int = 1) -> dict:
    d = _cogvideox_inputs(seed, batch)
    g = torch.Generator().manual_seed(seed + 1000)
    d.update(
        id_vit_hidden=[_randn(g, batch, 2, 2)],  # LFE_num_scale ViT feature maps of width LFE_vit_dim
        id_cond=_randn(g, batch, 2),  # LFE_id_dim
    )
    return d


# ---------------------------------------------------------------------------------------------------------------
# Cosmos (1.0 text-to-world)
# ---------------------------------------------------------------------------------------------------------------
_COSMOS = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=64,
    num_layers=2,
    mlp_ratio=2,
    text_embed_dim=128,  # K of attn2.to_k / to_v
    adaln_lora_dim=128,  # K of every norm*.linear_2
    max_size=(4, 32, 32),
    patch_size=(1, 2, 2),
    rope_scale=(2.0, 1.0, 1.0),
    concat_padding_mask=False,  # True resizes the padding mask with torchvision, which cannot be installed here
    extra_pos_embed_type="learnable",
)


def _cosmos_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=_randn(g, batch, 4, 2, 16, 16),  # 2 x 8 x 8 = 128 tokens
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=_randn(g, batch, _TEXT, 128),
        attention_mask=torch.ones(batch, _TEXT),
        fps=30,
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Latte (spatial + temporal blocks)
# ---------------------------------------------------------------------------------------------------------------
_LATTE = dict(
    sample_size=16,
    num_layers=1,
    patch_size=2,
    attention_head_dim=64,
    num_attention_heads=2,
    caption_channels=16,
    in_channels=4,
    cross_attention_dim=128,  # the caption projection maps to the inner dim, so this must equal it
    out_channels=8,
    attention_bias=True,
    activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000,
    norm_type="ada_norm_single",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    video_length=2,  # the temporal positional embedding is added unsliced: it must equal the frame count
)


def _latte_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=_randn(g, batch, 4, 2, 16, 16),  # 2 frames x 8 x 8 = 128 tokens
        timestep=torch.tensor([500] * batch),
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        enable_temporal_attentions=True,
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Allegro
# ---------------------------------------------------------------------------------------------------------------
_ALLEGRO = dict(
    num_attention_heads=4,
    attention_head_dim=96,  # the real head dim: the 3-axis RoPE needs head_dim % 3 == 0 (and each third even)
    in_channels=4,
    out_channels=4,
    num_layers=1,
    cross_attention_dim=384,  # the caption projection maps to the inner dim, so this must equal it
    sample_width=16,
    sample_height=16,
    sample_frames=2,
    caption_channels=16,
)


def _allegro_inputs(seed: int = 0, batch: int = 1) -> dict:
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    g = torch.Generator().manual_seed(seed)
    f, h, w = 2, 8, 8  # post-patch grid
    # The pipeline computes the RoPE (frequencies + integer positions); done the same way here.
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=_ALLEGRO["attention_head_dim"],
        crops_coords=((0, 0), (h, w)),
        grid_size=(h, w),
        temporal_size=f,
        interpolation_scale=(2.2, 2.0, 2.0),  # the class defaults
    )
    pos = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long())
    pos = pos.reshape(-1, 3).transpose(0, 1).reshape(3, 1, -1).contiguous()
    return dict(
        hidden_states=_randn(g, batch, 4, f, 2 * h, 2 * w),
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        timestep=torch.tensor([500] * batch),
        encoder_attention_mask=torch.ones(batch, _TEXT),
        image_rotary_emb=((freqs_t, freqs_h, freqs_w), tuple(pos)),
        return_dict=False,
    )


SPECS: dict[str, TinySpec] = {
    "CogVideoXTransformer3DModel": TinySpec(
        cls="CogVideoXTransformer3DModel",
        init=_COGVIDEOX,
        inputs=_cogvideox_inputs,
        note="tester's 2x8 heads / time_embed_dim 2 widened to 2x64 / 128; sample size matches the 2x16x16 input",
        blocks=("transformer_blocks",),
    ),
    "ConsisIDTransformer3DModel": TinySpec(
        cls="ConsisIDTransformer3DModel",
        init=_CONSISID,
        inputs=_consisid_inputs,
        note="tester widened to 2x64 heads, time_embed_dim 128, perceiver cross-attention 2x64; LFE_output_dim "
        "follows as int(128 * 2 / 3) = 85, so perceiver to_kv keeps K=85",
        # NOT transformer-block lists: perceiver_cross_attention (attention only, no FFN) and
        # local_facial_extractor.layers (a tiny perceiver resampler over the face-ID tokens, not the video stream).
        blocks=("transformer_blocks",),
    ),
    "CosmosTransformer3DModel": TinySpec(
        cls="CosmosTransformer3DModel",
        init=_COSMOS,
        inputs=_cosmos_inputs,
        note="tester's 2x12 heads widened to 2x64, text_embed_dim and adaln_lora_dim 128; concat_padding_mask=False "
        "because that path needs torchvision (no padding_mask input then)",
        blocks=("transformer_blocks",),
    ),
    "LatteTransformer3DModel": TinySpec(
        cls="LatteTransformer3DModel",
        init=_LATTE,
        inputs=_latte_inputs,
        note="tester's 2x4 heads widened to 2x64 (cross_attention_dim 128 = inner dim); 2 frames of 16x16, so "
        "video_length=2 (the tester's single frame broadcasts against any video_length)",
        # temporal_transformer_blocks are full BasicTransformerBlocks (self-attention + FFN) over the frame axis
        blocks=("transformer_blocks", "temporal_transformer_blocks"),
    ),
    "AllegroTransformer3DModel": TinySpec(
        cls="AllegroTransformer3DModel",
        init=_ALLEGRO,
        inputs=_allegro_inputs,
        note="tester's 2x8 heads widened to 4x96 (inner 384 = 3 x 128) so the pipeline's 3-axis RoPE can be "
        "passed, which the tester omits",
        blocks=("transformer_blocks",),
    ),
}
