"""Tiny random configs of the diffusers video DiTs (widened so K is a multiple of 64/128)."""
from __future__ import annotations

import re

import torch

from dvdq_compile.config import DEFAULT_BLOCK_PATTERN


def gaussian_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Gaussian N(0, 1/K) linear weights: default kaiming-uniform init is not what trained weights look like."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / m.weight.shape[1] ** 0.5)
    return model


def wan(num_layers=2, seed=0):
    from diffusers import WanTransformer3DModel
    torch.manual_seed(seed)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4,
                              out_channels=4, text_dim=16, freq_dim=256, ffn_dim=256, num_layers=num_layers,
                              cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    return gaussian_init(m.eval(), seed)


def wan_inputs(seed=0, per_token=False, timestep=500):
    g = torch.Generator().manual_seed(seed)
    t = torch.full((1, 128), timestep) if per_token else torch.tensor([timestep])
    return dict(hidden_states=torch.randn(1, 4, 2, 16, 16, generator=g), timestep=t,
                encoder_hidden_states=torch.randn(1, 24, 16, generator=g), return_dict=False)


def hunyuan(seed=0):
    from diffusers import HunyuanVideoTransformer3DModel
    torch.manual_seed(seed)
    m = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64,
                                       num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=1,
                                       patch_size_t=1, guidance_embeds=True, text_embed_dim=16,
                                       pooled_projection_dim=8, rope_axes_dim=(16, 24, 24))
    return gaussian_init(m.eval(), seed)


def hunyuan_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 4, 1, 16, 16, generator=g), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 24, 16, generator=g),
                encoder_attention_mask=torch.ones(1, 24), pooled_projections=torch.randn(1, 8, generator=g),
                guidance=torch.tensor([6.0]), return_dict=False)


def cogvideox(seed=0):
    from diffusers import CogVideoXTransformer3DModel
    torch.manual_seed(seed)
    m = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=64, in_channels=4, out_channels=4,
                                    time_embed_dim=128, text_embed_dim=16, num_layers=1, sample_width=16,
                                    sample_height=16, sample_frames=5, patch_size=2, temporal_compression_ratio=4,
                                    max_text_seq_length=24)
    return gaussian_init(m.eval(), seed)


def cogvideox_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 2, 4, 16, 16, generator=g),
                encoder_hidden_states=torch.randn(1, 24, 16, generator=g), timestep=torch.tensor([500]),
                return_dict=False)


def ltx(seed=0):
    from diffusers import LTXVideoTransformer3DModel
    torch.manual_seed(seed)
    m = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=64,
                                   cross_attention_dim=128, num_layers=1, qk_norm="rms_norm_across_heads",
                                   caption_channels=16)
    return gaussian_init(m.eval(), seed)


def ltx_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden_states=torch.randn(1, 2 * 8 * 8, 4, generator=g),
                encoder_hidden_states=torch.randn(1, 16, 16, generator=g), timestep=torch.tensor([500]),
                encoder_attention_mask=torch.ones(1, 16), num_frames=2, height=8, width=8, return_dict=False)


MODELS = {"wan": (wan, wan_inputs), "hunyuan": (hunyuan, hunyuan_inputs), "cogvideox": (cogvideox, cogvideox_inputs),
          "ltx": (ltx, ltx_inputs)}


def eligible_linears(model: torch.nn.Module, group: int = 128) -> list[str]:
    """Independent of the passes: block linears whose K is a multiple of the group, from the module list."""
    return [name for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and re.search(DEFAULT_BLOCK_PATTERN, name)
            and m.in_features % group == 0]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())
