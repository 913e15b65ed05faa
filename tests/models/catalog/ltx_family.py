"""Tiny specs for the LTX / Sana / MiniMax video transformers (see ``TinySpec``).

Every config is widened so that the linears inside the transformer blocks have K (in_features) a multiple of 128:
inner dims are 2 heads x 64 = 128, FFNs 4 x 128 = 512 (or 256 for MiniMax-H3's SwiGLU), and text/audio
cross-attention dims equal the inner dim. Inputs: 128 video tokens, 12 text tokens.
"""
from __future__ import annotations

import types

import torch

from . import TinySpec

_TEXT = 12  # text tokens


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen)


# ---------------------------------------------------------------------------------------------------------------
# LTX-Video
# ---------------------------------------------------------------------------------------------------------------
_LTX = dict(
    in_channels=4,
    out_channels=4,
    num_attention_heads=2,
    attention_head_dim=64,
    cross_attention_dim=128,  # the caption projection maps to the inner dim, so this must equal it
    num_layers=2,
    qk_norm="rms_norm_across_heads",
    caption_channels=16,
)


def _ltx_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    f, h, w = 2, 8, 8
    return dict(
        hidden_states=_randn(g, batch, f * h * w, 4),
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        timestep=torch.tensor([500] * batch),
        encoder_attention_mask=torch.ones(batch, _TEXT, dtype=torch.bool),
        num_frames=f,
        height=h,
        width=w,
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# LTX-2 (audio + video)
# ---------------------------------------------------------------------------------------------------------------
_LTX2 = dict(
    in_channels=4,
    out_channels=4,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=2,
    attention_head_dim=64,
    cross_attention_dim=128,
    audio_in_channels=4,
    audio_out_channels=4,
    audio_num_attention_heads=2,
    audio_attention_head_dim=64,
    audio_cross_attention_dim=128,
    num_layers=2,
    qk_norm="rms_norm_across_heads",
    caption_channels=16,
    rope_double_precision=False,
)


def _ltx2_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    f, h, w, audio_frames = 2, 8, 8, 9
    return dict(
        hidden_states=_randn(g, batch, f * h * w, 4),
        audio_hidden_states=_randn(g, batch, audio_frames, 4),
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        audio_encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        timestep=torch.tensor([500.0] * batch),
        encoder_attention_mask=torch.ones(batch, _TEXT, dtype=torch.bool),
        num_frames=f,
        height=h,
        width=w,
        audio_num_frames=audio_frames,
        fps=25.0,
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# Sana-Video
# ---------------------------------------------------------------------------------------------------------------
_SANA_VIDEO = dict(
    in_channels=16,
    out_channels=16,
    num_attention_heads=2,
    attention_head_dim=64,
    num_layers=2,
    num_cross_attention_heads=2,
    cross_attention_head_dim=64,
    cross_attention_dim=128,
    caption_channels=16,
    mlp_ratio=2.5,  # the FFN is GLUMBTempConv (convolutions), not linears
    dropout=0.0,
    attention_bias=False,
    sample_size=8,
    patch_size=(1, 2, 2),
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
)


def _sana_video_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=_randn(g, batch, 16, 2, 16, 16),  # 2 x 8 x 8 = 128 tokens after the (1, 2, 2) patch
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        timestep=torch.tensor([500] * batch),
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# SANA-WM (bidirectional GDN + softmax camera-controlled DiT; no diffusers tester exists)
# ---------------------------------------------------------------------------------------------------------------
_SANA_WM = dict(
    in_channels=16,
    num_layers=2,  # softmax_every_n=2: block 0 is a GDN (linear-recurrence) block, block 1 a softmax block
    hidden_size=128,
    num_attention_heads=2,  # cross-attention heads
    patch_size=(1, 1, 1),
    softmax_every_n=2,
    linear_head_dim=64,  # self-attention heads = hidden_size // linear_head_dim = 2
    ffn_type="GLUMBConvTemp",  # the FFN is convolutions, as in the release
    mlp_ratio=2.0,
    caption_channels=16,
    chunk_plucker_post_attn_blocks=2,
)


def _sana_wm_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    f, h, w = 2, 8, 8
    # (B, T, 20) camera conditions: flattened camera-to-world 4x4 (identity rotation, a small per-frame translation)
    # then fx, fy, cx, cy in latent pixels.
    c2w = torch.eye(4).repeat(batch, f, 1, 1)
    c2w[:, :, :3, 3] = 0.1 * _randn(g, batch, f, 3)
    intr = torch.tensor([w * 1.0, h * 1.0, w / 2, h / 2]).repeat(batch, f, 1)
    return dict(
        hidden_states=_randn(g, batch, 16, f, h, w),
        timestep=torch.full((batch, 1, f), 500.0),  # per-frame timesteps (LTX style)
        encoder_hidden_states=_randn(g, batch, 1, _TEXT, 16),
        encoder_attention_mask=torch.ones(batch, _TEXT, dtype=torch.long),
        camera_conditions=torch.cat([c2w.flatten(2), intr], dim=-1),
        chunk_plucker=_randn(g, batch, 48, f, h, w),
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# SANA-WM stage-2 refiner (LTX-2 architecture, video-only forward; no diffusers tester exists)
# ---------------------------------------------------------------------------------------------------------------
_SANA_WM_REFINER = dict(_LTX2)


def _sana_wm_refiner_inputs(seed: int = 0, batch: int = 1) -> dict:
    from diffusers.models.transformers.transformer_sana_wm_refiner import (
        SanaWMLTX2AudioVideoRotaryPosEmbed,
        SanaWMLTX2RefinerTransformer3DModel,
    )

    g = torch.Generator().manual_seed(seed)
    f, h, w = 2, 8, 8
    c = _SANA_WM_REFINER
    # The caller supplies the video RoPE; build it the way the model's own helper does (default rope settings).
    rope = SanaWMLTX2AudioVideoRotaryPosEmbed(
        dim=c["num_attention_heads"] * c["attention_head_dim"],
        patch_size=c["patch_size"],
        patch_size_t=c["patch_size_t"],
        double_precision=c["rope_double_precision"],
        num_attention_heads=c["num_attention_heads"],
    )
    video_rotary_emb = SanaWMLTX2RefinerTransformer3DModel.build_rotary_emb_for_absolute_positions(
        types.SimpleNamespace(rope=rope), batch, list(range(f)), h, w, torch.device("cpu"), 24.0
    )
    return dict(
        hidden_states=_randn(g, batch, f * h * w, 4),
        encoder_hidden_states=_randn(g, batch, _TEXT, 16),
        timestep=torch.full((batch, f * h * w), 500.0),  # per-token, as the refiner pipeline passes it
        video_rotary_emb=video_rotary_emb,
        encoder_attention_mask=torch.ones(batch, _TEXT, dtype=torch.long),
        return_dict=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# MiniMax-H3 (one packed text + audio + video sequence)
# ---------------------------------------------------------------------------------------------------------------
_MINIMAX_H3 = dict(
    num_attention_heads=2,
    attention_head_dim=64,
    hidden_size=128,
    num_layers=2,
    num_refiner_layers=2,
    ffn_dim=256,  # SwiGLU: proj 128 -> 2 x 256, out 256 -> 128
    in_channels=4,
    audio_in_channels=6,
    patch_size=(1, 2, 2),
    text_dim=16,
    freq_dim=32,
    time_embed_hidden_dim=128,
    time_embed_dim=128,  # K of every block's adaln_proj.linear
    rope_freq_dim=8,  # rotates 6 * 8 = 48 of the 64 head channels
)


def _minimax_h3_inputs(seed: int = 0, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    n_text, n_audio, (f, h, w) = _TEXT, 6, (2, 8, 8)
    n_video = f * h * w
    seq = n_text + n_audio + n_video
    text_idx = torch.arange(n_text)
    audio_idx = torch.arange(n_text, n_text + n_audio)
    video_idx = torch.arange(n_text + n_audio, seq)
    token_tags = torch.zeros(seq, dtype=torch.long)  # 0 video, 1 text, 2 audio
    token_tags[text_idx] = 1
    token_tags[audio_idx] = 2
    timestep_indices = torch.zeros(seq, dtype=torch.long)
    timestep_indices[audio_idx] = 1  # two distinct noise levels, so the (timestep, modality) table is indexed twice
    position_ids = torch.zeros(seq, 3)
    position_ids[:, 0] = torch.arange(seq, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    position_ids[video_idx] = grid.reshape(-1, 3).float() + torch.tensor([n_text + n_audio, 0.0, 0.0])
    return dict(
        hidden_states=_randn(g, batch, n_video, 4 * 2 * 2),
        audio_hidden_states=_randn(g, batch, n_audio, 6),
        encoder_hidden_states=_randn(g, batch, n_text, 16),
        timestep=torch.tensor([0.7, 0.3]),  # distinct timesteps in [0, 1], shared by the batch
        timestep_indices=timestep_indices,
        token_tags=token_tags,
        position_ids=position_ids,
        video_indices=video_idx,
        audio_indices=audio_idx,
        text_indices=text_idx,
        return_dict=False,
    )


SPECS: dict[str, TinySpec] = {
    "LTXVideoTransformer3DModel": TinySpec(
        cls="LTXVideoTransformer3DModel",
        init=_LTX,
        inputs=_ltx_inputs,
        note="tester's 2x8 heads widened to 2x64 (cross_attention_dim 128 = inner dim), 2 layers, 2x8x8 tokens",
        blocks=("transformer_blocks",),
    ),
    "LTX2VideoTransformer3DModel": TinySpec(
        cls="LTX2VideoTransformer3DModel",
        init=_LTX2,
        inputs=_ltx2_inputs,
        note="tester's video 2x8 / audio 2x4 heads widened to 2x64 each (cross dims 128), 2x8x8 video tokens",
        blocks=("transformer_blocks",),
    ),
    "SanaVideoTransformer3DModel": TinySpec(
        cls="SanaVideoTransformer3DModel",
        init=_SANA_VIDEO,
        inputs=_sana_video_inputs,
        note="tester's 2x12 heads widened to 2x64 (cross-attention 2x64, dim 128); the FFN is convolutional",
        blocks=("transformer_blocks",),
    ),
    "SanaWMTransformer3DModel": TinySpec(
        cls="SanaWMTransformer3DModel",
        init=_SANA_WM,
        inputs=_sana_wm_inputs,
        note="no diffusers tester: release config shrunk to hidden 128, one GDN + one softmax block, camera and "
        "chunk-Plucker inputs passed so the camera branch and plucker_proj run",
        blocks=("blocks",),
    ),
    "SanaWMLTX2RefinerTransformer3DModel": TinySpec(
        cls="SanaWMLTX2RefinerTransformer3DModel",
        init=_SANA_WM_REFINER,
        inputs=_sana_wm_refiner_inputs,
        note="no diffusers tester: the LTX-2 tiny config; video-only forward without KV cache, so the blocks' "
        "audio and audio/video cross-attention linears exist but never run",
        blocks=("transformer_blocks",),
    ),
    "MiniMaxH3Transformer3DModel": TinySpec(
        cls="MiniMaxH3Transformer3DModel",
        init=_MINIMAX_H3,
        inputs=_minimax_h3_inputs,
        note="tester's hidden 24 / 2x16 heads widened to hidden 128 / 2x64, ffn 256, time_embed_dim 128; "
        "12 text + 6 audio + 128 video packed rows",
        # both are attention + SwiGLU FFN blocks (the token refiner is a plain pre-norm block on the text rows)
        blocks=("token_refiner.refiner_blocks", "transformer_blocks"),
    ),
}
