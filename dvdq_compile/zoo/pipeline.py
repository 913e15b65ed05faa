"""Offline sampling for the zoo video DiT: flow-matching Euler + classifier-free guidance + Wan 2.2-style experts.

No network, no VAE, no text encoder: the model works in pixel space (``[B, 3, F, H, W]`` in [-1, 1]) and a class id
is turned into ``encoder_hidden_states`` by the fixed class table stored with the checkpoint.

Scheduler: ``diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=SHIFT)`` with
``SHIFT = 1.0`` -- the un-shifted rectified-flow schedule sigma_i = 1 - i/steps (timestep = 1000 * sigma), which
matches how the model was trained (sigma ~ logit-normal(0, 1)); at 16 x 16 pixels a resolution shift buys
nothing (SD3/Wan use shift > 1 for large latents). Only its ``sigmas`` / ``timesteps`` are used; the Euler update
``x <- x + (sigma_{i+1} - sigma_i) * v`` is written out here.

Every transformer call is a KEYWORD call
``model(hidden_states=x, timestep=t, encoder_hidden_states=e, return_dict=False)`` (the dvdquant backend finds the
``timestep`` input by name). With guidance != 1, each step makes TWO calls -- conditional first, then
unconditional (null class row) -- and mixes ``v = v_u + guidance * (v_c - v_u)``.

Two experts (Wan 2.2 MoE): ``model`` (high-noise expert) runs while ``t >= boundary * 1000``, ``model_low``
(low-noise expert) below; with ``model_low=None`` ``model`` runs every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import DEFAULT_DATA, DataConfig, class_names, num_classes
from .model import (
    DEFAULT_VERSION,
    checkpoint_path,
    expert_stems,
    load_checkpoint,
    null_class_id,
)

__all__ = ["SHIFT", "ZooPipeline", "load_pipeline", "make_scheduler", "sample", "make_wan_pipeline", "wan_pipeline_kwargs"]

SHIFT = 1.0
NUM_TRAIN_TIMESTEPS = 1000


def make_scheduler(shift: float = SHIFT):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=shift)


def _table_of(model, table):
    if table is not None:
        return table
    t = getattr(model, "_zoo_class_table", None)
    if t is not None:
        return t
    from .model import load_class_table

    return load_class_table("high")


@torch.no_grad()
def sample(
    model,
    class_ids,
    steps: int = 20,
    guidance: float = 3.0,
    seed: int | torch.Generator = 0,
    model_low=None,
    boundary: float = 0.5,
    progress: bool = True,
    *,
    shift: float = SHIFT,
    table: torch.Tensor | None = None,
    data: DataConfig = DEFAULT_DATA,
    noise: torch.Tensor | None = None,
    clip: bool = True,
    scheduler=None,
    callback=None,
    cfg_batch: bool = False,
) -> torch.Tensor:
    """Generate videos ``[B, 3, F, H, W]`` (float32, in [-1, 1] if ``clip``) for ``class_ids [B]``.

    Args:
        model: the (high-noise / only) transformer; any callable with the ``WanTransformer3DModel`` keyword
            signature works (e.g. a ``torch.compile``-d one).
        class_ids: ints in ``[0, num_classes)``; ``null_class_id()`` gives an unconditional sample.
        steps: Euler steps. guidance: CFG scale (1.0 = no guidance, one call per step).
        seed: int or ``torch.Generator`` for the initial noise (CPU generator; drawn in fp32).
        model_low: optional low-noise expert, used for ``t < boundary * 1000``.
        table: class-embedding table; default: the one attached by :func:`load_pipeline` / stored with the
            checkpoint.
        noise: optional initial noise ``[B, 3, F, H, W]`` (overrides ``seed``).
        callback: optional ``callback(i, t, x)`` after each step.
        cfg_batch: with guidance, one call per step on ``[cond; uncond]`` stacked on dim 0 (batch 2B) instead of two
            calls: what CFG-parallel (``dvdq_compile.parallel.enable(model, cfg=2)``) splits across ranks.
    """
    ids = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1)
    B = ids.numel()
    table = _table_of(model, table)
    p0 = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = p0.device if p0 is not None else torch.device("cpu")
    dtype = p0.dtype if p0 is not None else torch.float32
    if noise is None:
        g = seed if isinstance(seed, torch.Generator) else torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.randn(B, 3, data.frames, data.height, data.width, generator=g, dtype=torch.float32)
    x = noise.to(device=device, dtype=torch.float32)
    cond = table[ids].to(device=device, dtype=dtype)
    uncond = table[torch.full_like(ids, null_class_id(table.shape[0] - 1))].to(device=device, dtype=dtype)

    sched = scheduler or make_scheduler(shift)
    sched.set_timesteps(steps, device="cpu")
    sigmas = sched.sigmas.to(torch.float32)  # [steps + 1], last = 0
    timesteps = sched.timesteps.to(torch.float32)  # = 1000 * sigmas[:-1]
    boundary_t = boundary * NUM_TRAIN_TIMESTEPS

    it = range(len(timesteps))
    if progress:
        try:
            from tqdm.auto import tqdm

            it = tqdm(it, desc="zoo sample", leave=False)
        except ImportError:  # pragma: no cover
            pass
    for i in it:
        t = timesteps[i]
        m = model if (model_low is None or float(t) >= boundary_t) else model_low
        tt = t.expand(B).to(device=device, dtype=dtype)
        xin = x.to(dtype)
        if guidance != 1.0 and cfg_batch:
            both = m(hidden_states=torch.cat([xin, xin]), timestep=torch.cat([tt, tt]),
                     encoder_hidden_states=torch.cat([cond, uncond]), return_dict=False)[0].float()
            v, vu = both[:B], both[B:]
            v = vu + guidance * (v - vu)
        else:
            v = m(hidden_states=xin, timestep=tt, encoder_hidden_states=cond, return_dict=False)[0].float()
        if guidance != 1.0 and not cfg_batch:
            vu = m(hidden_states=xin, timestep=tt, encoder_hidden_states=uncond, return_dict=False)[0].float()
            v = vu + guidance * (v - vu)
        x = x + (sigmas[i + 1] - sigmas[i]).to(device) * v
        if callback is not None:
            callback(i, t, x)
    return x.clamp(-1.0, 1.0) if clip else x


@dataclass
class ZooPipeline:
    """The sampling setup: expert(s), class table, scheduler settings. ``pipe(class_ids, ...)`` = :func:`sample`."""

    model: torch.nn.Module
    model_low: torch.nn.Module | None
    table: torch.Tensor
    boundary: float = 0.5
    shift: float = SHIFT
    data: DataConfig = DEFAULT_DATA
    meta: dict = field(default_factory=dict)
    version: str = DEFAULT_VERSION

    def __call__(self, class_ids, steps: int = 20, guidance: float = 3.0, seed=0, progress: bool = True, **kw):
        kw.setdefault("model_low", self.model_low)
        return sample(self.model, class_ids, steps=steps, guidance=guidance, seed=seed, boundary=self.boundary,
                      progress=progress, shift=self.shift, table=self.table, data=self.data, **kw)

    @staticmethod
    def class_names() -> list[str]:
        return class_names()

    @staticmethod
    def num_classes() -> int:
        return num_classes()

    def null_class_id(self) -> int:
        return self.table.shape[0] - 1


def load_pipeline(two_experts: bool = True, *, boundary: float = 0.5, device="cpu", dtype=torch.float32,
                  version: str = DEFAULT_VERSION, high: str | None = None, low: str | None = None) -> ZooPipeline:
    """Load the committed checkpoint(s) of zoo ``version`` from ``bench/zoo``: v1 ``wan_zoo`` / ``wan_zoo_low``, v2
    ``wan_zoo_v2`` / ``wan_zoo_v2_low`` (high-noise / all-noise expert, and with ``two_experts`` the low-noise one);
    ``high`` / ``low`` name other checkpoints. ``FileNotFoundError`` (with the training command) if one is missing."""
    stems = expert_stems(version)
    high, low = high or stems[0], low or stems[1]
    model, table, meta = load_checkpoint(checkpoint_path(high), dtype=dtype, device=device)
    model._zoo_class_table = table
    model_low = None
    if two_experts:
        model_low, table_low, _ = load_checkpoint(checkpoint_path(low), dtype=dtype, device=device)
        if not torch.equal(table_low, table):
            raise ValueError("the two experts were trained with different class tables")
        model_low._zoo_class_table = table
    return ZooPipeline(model=model, model_low=model_low, table=table, boundary=boundary, meta=meta, version=version)


def make_wan_pipeline(model=None, model_low=None, boundary: float = 0.5, shift: float = SHIFT):
    """A ``diffusers.WanPipeline`` over the zoo experts (``tokenizer=None, text_encoder=None, vae=None``).

    Pixel space cannot go through WanPipeline's VAE, so the pipeline has no VAE and must be called with
    ``output_type="latent"`` and sizes in VAE units: ``num_frames = 4 * (F - 1) + 1``, ``height = 8 * H``,
    ``width = 8 * W`` (WanPipeline's default VAE factors when ``vae`` is None), e.g. for 8 x 16 x 16 clips
    ``num_frames=29, height=128, width=128``; pass ``prompt_embeds=table[ids]`` and
    ``negative_prompt_embeds=table[[null] * B]``. See :func:`wan_pipeline_kwargs`. Needs ``transformers``
    installed (diffusers' WanPipeline imports it); raises ``ImportError`` otherwise.
    """
    try:
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("make_wan_pipeline needs `transformers` (diffusers' WanPipeline requires it); "
                          "use dvdq_compile.zoo.sample() instead") from e
    from diffusers import WanPipeline

    if model is None:
        p = load_pipeline(two_experts=model_low is None)
        model, model_low = p.model, (model_low or p.model_low)
    return WanPipeline(
        tokenizer=None, text_encoder=None, vae=None, scheduler=make_scheduler(shift), transformer=model,
        transformer_2=model_low, boundary_ratio=boundary if model_low is not None else None,
    )


def wan_pipeline_kwargs(class_ids, table: torch.Tensor, data: DataConfig = DEFAULT_DATA, steps: int = 20,
                        guidance: float = 3.0, seed: int = 0) -> dict:
    """Call arguments for :func:`make_wan_pipeline`'s pipeline that produce ``[B, 3, F, H, W]`` pixel videos."""
    ids = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1)
    null = torch.full_like(ids, table.shape[0] - 1)
    return dict(
        prompt_embeds=table[ids], negative_prompt_embeds=table[null], num_frames=4 * (data.frames - 1) + 1,
        height=8 * data.height, width=8 * data.width, num_inference_steps=steps, guidance_scale=guidance,
        output_type="latent", generator=torch.Generator().manual_seed(seed),
    )
