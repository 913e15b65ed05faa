"""dvdq_compile.metrics: identities, an independent SSIM reference, monotonicity, temporal metrics, errors."""
import itertools
import math

import pytest
import torch

from dvdq_compile import metrics as M

SHAPE = (2, 3, 8, 16, 16)  # the zoo's [B, C, F, H, W]


def _video(shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def _moving(shape=SHAPE, seed=0, noise=0.05):
    """A smoothly moving pattern: neighbouring frames are similar, distant ones are not (temporal structure)."""
    b, c, f, h, w = shape
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    phase = torch.rand(b, c, 1, 1, 1, generator=g) * 6.28
    t = torch.arange(f, dtype=torch.float32).view(1, 1, f, 1, 1)
    v = 0.8 * torch.sin(2 * math.pi * (xx + 0.5 * yy) / w + 0.6 * t + phase)
    return (v + noise * torch.randn(shape, generator=g)).clamp(-1, 1)


# --------------------------------------------------------------------------------- independent SSIM reference
def _ssim_loop(a: torch.Tensor, b: torch.Tensor, win: int = 11, sigma: float = 1.5) -> float:
    """Slow SSIM of two 2-D frames from explicit weighted window sums at every valid position (float64)."""
    a, b = a.double(), b.double()
    h, w = a.shape
    wh, ww = min(win, h), min(win, w)
    # 2-D Gaussian built directly (not as a product of the module's 1-D taps), normalised to sum 1.
    ys = torch.tensor([i - (wh - 1) / 2 for i in range(wh)], dtype=torch.float64)
    xs = torch.tensor([j - (ww - 1) / 2 for j in range(ww)], dtype=torch.float64)
    g2 = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    g2 = g2 / g2.sum()
    c1, c2 = (0.01 * 2) ** 2, (0.03 * 2) ** 2
    vals = []
    for i in range(h - wh + 1):
        for j in range(w - ww + 1):
            pa, pb = a[i:i + wh, j:j + ww], b[i:i + wh, j:j + ww]
            mu_a, mu_b = (g2 * pa).sum(), (g2 * pb).sum()
            # Variances from centred values (not E[x²] − μ²): a different formula than the module's.
            va = (g2 * (pa - mu_a) ** 2).sum()
            vb = (g2 * (pb - mu_b) ** 2).sum()
            cov = (g2 * (pa - mu_a) * (pb - mu_b)).sum()
            vals.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) /
                        ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2)))
    return float(torch.stack(vals).mean())


def _ssim_video_loop(x, ref):
    b, c, f = x.shape[:3]
    return sum(_ssim_loop(x[i, j, k], ref[i, j, k]) for i in range(b) for j in range(c) for k in range(f)) / (b * c * f)


# ------------------------------------------------------------------------------------------------ identities
def test_identical_inputs():
    x = _moving()
    assert M.psnr(x, x.clone()) == math.inf
    assert torch.isinf(M.psnr_per_video(x, x.clone())).all()
    assert M.ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-12)
    assert M.frame_diff_corr(x, x.clone()) == pytest.approx(1.0, abs=1e-12)
    assert M.relation_kl(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert M.sqnr_db(x, x.clone()) == math.inf


@pytest.mark.parametrize("sigma", [0.01, 0.1])
def test_psnr_and_sqnr_values(sigma):
    ref = _video()
    noise = sigma * torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x = ref + noise
    err = x.double() - ref.double()  # not `noise`: x = ref + noise was rounded to float32
    mse = float(err.square().mean())
    assert M.psnr(x, ref) == pytest.approx(10 * math.log10(4.0 / mse), rel=1e-9)
    assert M.psnr(x, ref, peak=1.0) == pytest.approx(10 * math.log10(1.0 / mse), rel=1e-9)
    per = M.psnr_per_video(x, ref)
    assert per.shape == (SHAPE[0],)
    mse0 = float(err[0].square().mean())
    assert float(per[0]) == pytest.approx(10 * math.log10(4.0 / mse0), rel=1e-9)
    sq = float(ref.double().square().sum()) / float(err.square().sum())
    assert M.sqnr_db(x, ref) == pytest.approx(10 * math.log10(sq), rel=1e-9)


def test_psnr_pools_mse_over_batch():
    """One identical video in the batch must not make the batch PSNR infinite."""
    ref = _video()
    x = ref.clone()
    x[1] += 0.1
    assert M.psnr(x, ref) == pytest.approx(10 * math.log10(4.0 / (0.01 / 2)), rel=1e-5)
    per = M.psnr_per_video(x, ref)
    assert math.isinf(float(per[0])) and math.isfinite(float(per[1]))


def test_sqnr_zero_signal():
    z = torch.zeros(4, 4)
    assert M.sqnr_db(z, z.clone()) == math.inf
    assert M.sqnr_db(torch.ones(4, 4), z) == -math.inf


# ------------------------------------------------------------------------------------------------------ SSIM
@pytest.mark.parametrize("a,b", [(0.5, -0.5), (0.25, 0.375), (-1.0, 1.0)])  # values exact in float32
def test_ssim_constant_frames_by_hand(a, b):
    """Constant frames: σ = 0, so SSIM = (2ab + C1)/(a² + b² + C1) · C2/C2 (checkable by hand)."""
    x = torch.full((1, 3, 2, 16, 16), a)
    ref = torch.full((1, 3, 2, 16, 16), b)
    c1 = (0.01 * 2) ** 2
    assert M.ssim(x, ref) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-9)


def test_ssim_negated_zero_mean_pattern_by_hand():
    """A checkerboard vs its negation: every 11x11 window has μ = ±ε (odd window), so luminance ≈ 1 and
    SSIM ≈ (C2 − 2σ²)/(2σ² + C2) with σ² = 1 − μ² ≈ 1: a value near −1 that identity-only tests would miss."""
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    board = (((yy + xx) % 2) * 2 - 1).float().expand(1, 1, 1, 16, 16)
    s = M.ssim(-board, board)
    loop = _ssim_video_loop(-board, board)
    assert s == pytest.approx(loop, abs=1e-12)
    assert -1.0 < s < -0.99


@pytest.mark.parametrize("shape,seed", [((1, 3, 2, 16, 16), 0), ((2, 1, 3, 16, 20), 1), ((1, 2, 2, 13, 11), 2)])
def test_ssim_matches_loop_reference(shape, seed):
    ref = _video(shape, seed)
    x = (ref + 0.2 * torch.randn(shape, generator=torch.Generator().manual_seed(seed + 10))).clamp(-1, 1)
    assert M.ssim(x, ref) == pytest.approx(_ssim_video_loop(x, ref), abs=1e-5)


@pytest.mark.parametrize("hw", [(8, 8), (6, 16)])
def test_ssim_small_frames_shrink_window(hw):
    shape = (1, 2, 2, *hw)
    ref = _video(shape, 3)
    x = (ref + 0.3 * torch.randn(shape, generator=torch.Generator().manual_seed(4))).clamp(-1, 1)
    s = M.ssim(x, ref)
    assert math.isfinite(s)
    assert s == pytest.approx(_ssim_video_loop(x, ref), abs=1e-5)


def test_ssim_matches_skimage():
    import skimage.metrics as skm  # the test extras install scikit-image: this reference must run
    ref = _video((1, 3, 2, 16, 16), 5)
    x = (ref + 0.2 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(6))).clamp(-1, 1)
    vals = [skm.structural_similarity(x[0, c, f].double().numpy(), ref[0, c, f].double().numpy(),
                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                      data_range=2)
            for c in range(3) for f in range(2)]
    assert M.ssim(x, ref) == pytest.approx(sum(vals) / len(vals), abs=1e-5)


def test_ssim_decreases_with_noise():
    ref = _moving()
    n = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    vals = [M.ssim((ref + s * n).clamp(-1, 1), ref) for s in (0.0, 0.02, 0.05, 0.1, 0.2, 0.5)]
    assert vals[0] == pytest.approx(1.0)
    assert all(a > b for a, b in itertools.pairwise(vals)), vals


# ---------------------------------------------------------------------------------------------- temporal
def test_frame_shuffle_vs_brightness_offset():
    ref = _moving()
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled = ref[:, :, perm]
    offset = ref + 0.05 * torch.randn(1, 1, SHAPE[2], 1, 1, generator=torch.Generator().manual_seed(8))
    near = ref + 0.01 * torch.randn(SHAPE, generator=torch.Generator().manual_seed(9))

    kl_shuf, kl_near = M.relation_kl(shuffled, ref), M.relation_kl(near, ref)
    assert kl_shuf > 0
    assert kl_shuf > 20 * kl_near, (kl_shuf, kl_near)

    c_shuf, c_off = M.frame_diff_corr(shuffled, ref), M.frame_diff_corr(offset, ref)
    assert c_shuf < 0.5, c_shuf
    assert c_off > 0.95, c_off
    assert c_off > c_shuf + 0.4


def test_relation_kl_temperature():
    """A lower temperature sharpens the rows, so the same structural change costs more KL."""
    ref = _moving()
    shuffled = ref[:, :, torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])]
    assert M.relation_kl(shuffled, ref, tau=0.1) > M.relation_kl(shuffled, ref, tau=1.0) > 0
    with pytest.raises(ValueError, match="tau"):
        M.relation_kl(ref, ref, tau=0.0)


@pytest.mark.parametrize("case", ["both_static", "x_static", "ref_static", "zeros"])
def test_no_nan_on_constant_videos(case):
    moving = _moving()
    static = torch.full(SHAPE, 0.3)
    x, ref = {"both_static": (static, static * 0.5), "x_static": (static, moving),
              "ref_static": (moving, static), "zeros": (torch.zeros(SHAPE), torch.zeros(SHAPE))}[case]
    vals = {"psnr": M.psnr(x, ref), "ssim": M.ssim(x, ref), "corr": M.frame_diff_corr(x, ref),
            "kl": M.relation_kl(x, ref), "sqnr": M.sqnr_db(x, ref)}
    assert not any(math.isnan(v) for v in vals.values()), vals
    assert vals["corr"] == (1.0 if case in ("both_static", "zeros") else 0.0)


def test_relation_matrix_rows_and_layout():
    feats = torch.randn(2, 5, 7, 4)  # [B, F, tokens, D]
    p = M.relation_matrix(feats, tau=0.5)
    assert p.shape == (2, 5, 5)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 5))
    # A video's relation matrix is over frames (dim 2), not channels: permuting frames permutes P.
    v = _moving((1, 3, 6, 8, 8))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    pv = M.relation_matrix(v.transpose(1, 2))
    pp = M.relation_matrix(v[:, :, perm].transpose(1, 2))
    torch.testing.assert_close(pp, pv[:, perm][:, :, perm])


def test_relation_kl_loss_is_differentiable():
    ref = torch.randn(2, 4, 6, 8)
    x = (ref + 0.3 * torch.randn(ref.shape)).requires_grad_(True)
    loss = M.relation_kl_loss(x, ref)
    assert loss.dim() == 0 and loss.requires_grad and float(loss.detach()) > 0
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The float video metric is the same quantity with frames moved to dim 1 (compared in float64: the KL of
    # two similar videos is ~1e-5, below float32's resolution of log-probability differences).
    v, r = _moving(seed=1).double(), _moving(seed=2).double()
    v[:, :, 3] = v[:, :, 0]  # a repeated frame: a structural change, so the KL is well above rounding
    loss64 = float(M.relation_kl_loss(v.transpose(1, 2), r.transpose(1, 2)))
    assert loss64 > 1e-3
    assert M.relation_kl(v, r) == pytest.approx(loss64, rel=1e-12)
    # Transposing the wrong axes (channels as frames) gives a different number: the layout matters.
    assert float(M.relation_kl_loss(v, r)) != pytest.approx(loss64, rel=1e-3)


# ---------------------------------------------------------------------------------------------- validation
VIDEO_FNS = [M.psnr, M.psnr_per_video, M.ssim, M.ssim_per_video, M.frame_diff_corr, M.relation_kl]


@pytest.mark.parametrize("fn", VIDEO_FNS, ids=lambda f: f.__name__)
def test_mismatched_shapes(fn):
    with pytest.raises(ValueError, match=r"x and ref must have the same shape \[B, C, F, H, W\]"):
        fn(torch.zeros(1, 3, 8, 16, 16), torch.zeros(1, 3, 8, 16, 15))


@pytest.mark.parametrize("fn", VIDEO_FNS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("bad", ["x", "ref"])
def test_wrong_ndim_names_argument(fn, bad):
    good, wrong = torch.zeros(1, 3, 8, 16, 16), torch.zeros(3, 8, 16, 16)
    args = (wrong, good) if bad == "x" else (good, wrong)
    with pytest.raises(ValueError, match=rf"^{bad} must have shape \[B, C, F, H, W\] \(5-D\), got shape "
                                         r"\(3, 8, 16, 16\) \(4-D\)"):
        fn(*args)


def test_other_input_errors():
    v = torch.zeros(1, 3, 8, 16, 16)
    with pytest.raises(TypeError, match="ref must be a torch.Tensor"):
        M.psnr(v, v.numpy())
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        M.ssim(v.to(torch.uint8), v)
    with pytest.raises(ValueError, match=r"at least 2 frames"):
        M.frame_diff_corr(v[:, :, :1], v[:, :, :1])
    with pytest.raises(ValueError, match=r"x must have shape \[B, F, \.\.\.\] \(at least 3-D\)"):
        M.relation_kl_loss(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"x and ref must have the same shape"):
        M.sqnr_db(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="peak must be > 0"):
        M.psnr(v, v, peak=0)
