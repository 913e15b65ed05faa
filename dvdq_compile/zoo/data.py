"""Procedural video data set for the zoo's small video DiT ("moving shapes").

Every clip is a short video of ONE anti-aliased shape on a soft two-colour gradient background, moving with
one of several motion laws, so a model has to get *temporal* consistency right (the same object, the same
colour, a smooth trajectory) and not just per-frame appearance.

* shapes : ``circle``, ``square``, ``triangle``, ``stripes`` (a disc filled with a two-colour grating)
* motions: ``translate`` (constant velocity, stays in frame), ``bounce`` (fast, reflects off the walls),
  ``rotate`` (spins about a fixed centre), ``pulse`` (scale oscillates about a fixed centre),
  ``colour`` (hue cycles frame to frame while the shape drifts slowly)

The class id is a (shape, motion) pair; 16 classes (a rotating plain disc is invisible, so the circle gets
``colour`` instead of ``rotate``; every shape translates, bounces and pulses). See :func:`class_names`.

Clips are ``[3, F, H, W]`` float32 in ``[-1, 1]`` (F = 8 frames, H = W = 16 by default). Everything is drawn from
a ``torch.Generator``, so a batch is a pure function of ``(batch, seed)`` -- on any machine, no files, no network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

__all__ = [
    "CLASSES",
    "DataConfig",
    "DEFAULT_DATA",
    "class_names",
    "num_classes",
    "render_clip",
    "sample_batch",
]

# (shape, motion) per class id -- the order is part of the checkpoint contract, do not reorder.
CLASSES: tuple[tuple[str, str], ...] = (
    ("circle", "translate"),
    ("circle", "bounce"),
    ("circle", "pulse"),
    ("circle", "colour"),
    ("square", "translate"),
    ("square", "bounce"),
    ("square", "rotate"),
    ("square", "pulse"),
    ("triangle", "translate"),
    ("triangle", "bounce"),
    ("triangle", "rotate"),
    ("triangle", "pulse"),
    ("stripes", "translate"),
    ("stripes", "bounce"),
    ("stripes", "rotate"),
    ("stripes", "colour"),
)


@dataclass(frozen=True)
class DataConfig:
    frames: int = 8
    height: int = 16
    width: int = 16
    edge: float = 0.45  # anti-aliasing softness of shape edges, in pixels

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_DATA = DataConfig()


def class_names() -> list[str]:
    """``["circle/translate", ...]``, indexed by class id."""
    return [f"{s}/{m}" for s, m in CLASSES]


def num_classes() -> int:
    return len(CLASSES)


# --------------------------------------------------------------------------------------------- helpers
def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _sign(g: torch.Generator) -> float:
    return 1.0 if float(torch.rand((), generator=g)) < 0.5 else -1.0


def _hsv_to_rgb(h: torch.Tensor, s: float, v: float) -> torch.Tensor:
    """h: [...] in turns (any real) -> [..., 3] in [0, 1]."""
    h = torch.remainder(h, 1.0)
    k = torch.remainder(torch.tensor([5.0, 3.0, 1.0]) + h[..., None] * 6.0, 6.0)
    return v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


def _reflect(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Fold an unbounded 1-D trajectory into [lo, hi] (elastic bounces off both walls)."""
    span = max(hi - lo, 1e-6)
    y = torch.remainder(x - lo, 2 * span)
    return lo + torch.where(y > span, 2 * span - y, y)


def _sdf(shape: str, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, <0 inside) of a shape of 'radius' r centred at 0 in local (rotated) coordinates."""
    if shape in ("circle", "stripes"):
        return torch.sqrt(px * px + py * py) - r
    if shape == "square":
        a = r * 0.85  # half side, so the square's area is close to the disc's
        qx, qy = px.abs() - a, py.abs() - a
        outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
        return outside + torch.minimum(torch.maximum(qx, qy), torch.zeros_like(qx))
    if shape == "triangle":
        # equilateral triangle, circumradius ~1.25 r, apex up (iq's exact SDF)
        s = r * 1.25 * math.sqrt(3.0)  # side length
        k = math.sqrt(3.0)
        x = px.abs() - s / 2
        y = -py + s / (2 * k)  # image y grows downward; flip so the apex points up
        flip = (x + k * y) > 0
        x2 = torch.where(flip, (x - k * y) / 2, x)
        y2 = torch.where(flip, (-k * x - y) / 2, y)
        x2 = x2 - torch.maximum(torch.minimum(x2, torch.zeros_like(x2)), -s)
        return -torch.sqrt(x2 * x2 + y2 * y2) * torch.sign(y2)
    raise ValueError(f"unknown shape {shape!r}")


# --------------------------------------------------------------------------------------------- rendering
def render_clip(class_id: int, g: torch.Generator, cfg: DataConfig = DEFAULT_DATA) -> torch.Tensor:
    """One clip ``[3, F, H, W]`` in ``[-1, 1]`` of class ``class_id``, all randomness drawn from ``g``."""
    shape, motion = CLASSES[int(class_id)]
    F, H, W = cfg.frames, cfg.height, cfg.width
    S = min(H, W)
    t = torch.arange(F, dtype=torch.float32)

    # ---- background: a soft gradient between two dark/low-saturation colours
    bh = _u(g, 0.0, 1.0)
    c0 = _hsv_to_rgb(torch.tensor(bh), _u(g, 0.2, 0.6), _u(g, 0.10, 0.35))
    c1 = _hsv_to_rgb(torch.tensor(bh + _u(g, -0.15, 0.15)), _u(g, 0.2, 0.6), _u(g, 0.10, 0.35))
    ang = _u(g, 0.0, 2 * math.pi)
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    ramp = ((xx - (W - 1) / 2) * math.cos(ang) + (yy - (H - 1) / 2) * math.sin(ang)) / S + 0.5
    ramp = ramp.clamp(0, 1)
    bg = c0[:, None, None] * (1 - ramp) + c1[:, None, None] * ramp  # [3, H, W]

    # ---- foreground: bright saturated colour (hue per frame: constant unless motion == colour)
    h0 = _u(g, 0.0, 1.0)
    dh = _sign(g) * _u(g, 0.07, 0.12) if motion == "colour" else 0.0
    fg_hue = h0 + dh * t  # [F]
    sat, val = _u(g, 0.65, 1.0), _u(g, 0.8, 1.0)
    fg = _hsv_to_rgb(fg_hue, sat, val)  # [F, 3]
    fg2 = _hsv_to_rgb(fg_hue + 0.5, sat * 0.6, val * 0.35) if shape == "stripes" else None  # grating's dark colour

    # ---- geometry over time: centre (cx, cy), radius r, rotation theta  (all [F])
    r0 = _u(g, 0.20, 0.28) * S  # ~3.2 .. 4.5 px at 16x16
    theta0 = _u(g, 0.0, 2 * math.pi)
    r = torch.full((F,), r0)
    theta = torch.full((F,), theta0)
    extent = r0 * {"triangle": 1.25, "square": 1.2}.get(shape, 1.0)  # farthest point from the centre
    margin = extent + 0.3
    lo_x, hi_x, lo_y, hi_y = margin, W - 1 - margin, margin, H - 1 - margin
    if motion == "translate":
        speed, dirn = _u(g, 0.06, 0.10) * S, _u(g, 0.0, 2 * math.pi)
        vx, vy = speed * math.cos(dirn), speed * math.sin(dirn)
        span = F - 1
        # start position chosen so the whole trajectory stays inside the frame
        x0 = _u(g, lo_x - min(0.0, vx * span), max(lo_x - min(0.0, vx * span), hi_x - max(0.0, vx * span)))
        y0 = _u(g, lo_y - min(0.0, vy * span), max(lo_y - min(0.0, vy * span), hi_y - max(0.0, vy * span)))
        cx, cy = x0 + vx * t, y0 + vy * t
    elif motion == "bounce":
        speed, dirn = _u(g, 0.14, 0.20) * S, _u(g, 0.0, 2 * math.pi)
        vx, vy = speed * math.cos(dirn), speed * math.sin(dirn)
        x0, y0 = _u(g, lo_x, hi_x), _u(g, lo_y, hi_y)
        cx, cy = _reflect(x0 + vx * t, lo_x, hi_x), _reflect(y0 + vy * t, lo_y, hi_y)
    else:
        # stationary-ish centre (rotate / pulse) or slow drift (colour)
        x0, y0 = _u(g, lo_x + 1, hi_x - 1), _u(g, lo_y + 1, hi_y - 1)
        if motion == "colour":
            dirn = _u(g, 0.0, 2 * math.pi)
            vx, vy = 0.02 * S * math.cos(dirn), 0.02 * S * math.sin(dirn)
        else:
            vx = vy = 0.0
        cx, cy = x0 + vx * t, y0 + vy * t
        if motion == "rotate":
            omega = _sign(g) * _u(g, 0.22, 0.38)  # rad / frame (< pi/8 .. ~pi/8: unambiguous for a square)
            theta = theta0 + omega * t
        elif motion == "pulse":
            amp, period, phase = _u(g, 0.30, 0.45), _u(g, 5.0, 8.0), _u(g, 0.0, 2 * math.pi)
            r = r0 * (1.0 + amp * torch.sin(2 * math.pi * t / period + phase))
        elif motion != "colour":
            raise ValueError(f"unknown motion {motion!r}")
    # stripes also get a grating phase; period in px
    period_px = _u(g, 2.6, 3.4) if shape == "stripes" else 1.0

    # ---- rasterise all frames at once
    dx = xx[None] - torch.as_tensor(cx, dtype=torch.float32)[:, None, None]  # [F, H, W]
    dy = yy[None] - torch.as_tensor(cy, dtype=torch.float32)[:, None, None]
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    px, py = c * dx + s * dy, -s * dx + c * dy
    rr = r[:, None, None]
    alpha = torch.sigmoid(-_sdf(shape, px, py, rr) / cfg.edge)  # [F, H, W]
    col = fg.T[:, :, None, None].expand(3, F, H, W)  # [3, F, H, W]
    if shape == "stripes":
        scale = rr / r0  # the grating scales with the disc
        wave = 0.5 + 0.5 * torch.cos(2 * math.pi * px / (period_px * scale))
        w = torch.sigmoid((wave - 0.5) * 8.0)[None]  # softened square wave
        col = col * w + fg2.T[:, :, None, None] * (1 - w)
    video = bg[:, None] * (1 - alpha[None]) + col * alpha[None]
    return (video * 2.0 - 1.0).clamp(-1.0, 1.0).to(torch.float32)


def _as_generator(seed_or_generator) -> torch.Generator:
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    g = torch.Generator(device="cpu")
    g.manual_seed(0 if seed_or_generator is None else int(seed_or_generator))
    return g


def sample_batch(
    batch: int,
    seed: int | torch.Generator | None = 0,
    *,
    class_ids: torch.Tensor | list[int] | None = None,
    cfg: DataConfig = DEFAULT_DATA,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic batch of clips.

    Args:
        batch: number of clips B.
        seed: an int seed (a fresh CPU generator is made from it) or a ``torch.Generator`` (advanced in place).
        class_ids: optional fixed class ids [B]; by default drawn uniformly from the generator.
        cfg: frame count / size.

    Returns:
        ``(videos [B, 3, F, H, W] float32 in [-1, 1], class_ids [B] int64)``.
    """
    g = _as_generator(seed)
    if class_ids is None:
        ids = torch.randint(0, num_classes(), (batch,), generator=g, dtype=torch.int64)
    else:
        ids = torch.as_tensor(class_ids, dtype=torch.int64).reshape(-1)
        if ids.numel() != batch:
            raise ValueError(f"class_ids has {ids.numel()} entries, batch is {batch}")
        if ids.numel() and (ids.min() < 0 or ids.max() >= num_classes()):
            raise ValueError(f"class ids must be in [0, {num_classes()})")
    videos = torch.stack([render_clip(int(c), g, cfg) for c in ids]) if batch else torch.empty(0, 3, cfg.frames, cfg.height, cfg.width)
    return videos, ids
