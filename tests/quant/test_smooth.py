import pytest
import torch

from dvdq_compile.quant.smooth import S_MAX, S_MIN, smooth_factors, weight_absmax


def test_formula_and_exactness_in_full_precision():
    a = torch.rand(64) * 10 + 0.1
    w = torch.randn(32, 64)
    s = smooth_factors(a, w.abs().amax(0), 0.5)
    torch.testing.assert_close(s, (a.sqrt() / w.abs().amax(0).sqrt()))
    x = torch.randn(8, 64) * a
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_alpha_extremes(alpha):
    a, w = torch.rand(16) + 0.5, torch.rand(16) + 0.5
    s = smooth_factors(a, w, alpha)
    torch.testing.assert_close(s, 1 / w if alpha == 0 else a)


def test_dead_channels_keep_one_and_clamped():
    a = torch.tensor([0.0, 1.0, 1e30, 1.0, float("nan")])
    w = torch.tensor([1.0, 0.0, 1e-30, 1.0, 1.0])
    s = smooth_factors(a, w, 0.5)
    assert s[0] == 1 and s[1] == 1 and s[4] == 1
    assert s[2] == S_MAX and s[3] == 1
    assert torch.isfinite(s).all() and (s >= S_MIN).all()


def test_bad_input():
    with pytest.raises(ValueError, match="same 1-D"):
        smooth_factors(torch.ones(4), torch.ones(5), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        smooth_factors(torch.ones(4), torch.ones(4), 1.5)


def test_weight_absmax_over_group():
    w1, w2 = torch.randn(3, 8), torch.randn(5, 8)
    torch.testing.assert_close(weight_absmax([w1, w2]), torch.cat([w1, w2]).abs().amax(0))
