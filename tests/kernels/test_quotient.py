"""The GPU kernels' quotient (tl_common.quotient with FMA_DIV: one reciprocal per group, a multiply and two FMAs) is
IEEE division, checked here on the arithmetic itself: every fp32 operation of the sequence emulated exactly
(products and sums as rationals, one round-to-nearest-even to binary32 per operation, FMAs rounded once), compared
with numpy's IEEE fp32 division. The interpreter cannot run the sequence (its tl.fma rounds twice), so the kernels'
interpreter tests divide with div_rn; on a GPU tests/kernels/test_gpu.py compares the codes bit for bit."""
from fractions import Fraction

import numpy as np
import pytest

TWO_M64, TWO_64 = 2.0**-64, 2.0**64


def rn32(v: Fraction) -> np.float32:
    """``v`` rounded to the nearest binary32, ties to even (subnormals included; no overflow in these inputs)."""
    if v == 0:
        return np.float32(0.0)
    sign, a = (-1 if v < 0 else 1), abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    e = max(e, -126)                    # below: the subnormal spacing 2^-149
    scale = Fraction(2) ** (23 - e)
    m = a * scale
    n = m.numerator // m.denominator
    rem = m - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2):
        n += 1
    return np.float32(sign * float(Fraction(n) / scale))


def mul(a, b):
    return rn32(Fraction(float(a)) * Fraction(float(b)))


def fma(a, b, c):
    return rn32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


def quotient(x: np.float32, s: np.float32) -> np.float32:
    """tl_common.quotient's GPU branch, operation by operation."""
    k = np.float32(TWO_64) if s < np.float32(TWO_M64) else np.float32(1.0)
    sk, xk = mul(s, k), mul(x, k)
    r = rn32(Fraction(1) / Fraction(float(sk)))
    q = mul(xk, r)
    e = fma(-q, sk, xk)
    return fma(e, r, q)


def _cases(n: int, seed: int, qmax: int):
    """(x, s) as the kernels see them: s = absmax/qmax over a wide exponent range (subnormal scales included), x
    in [−absmax, absmax], most of them within a few ulps of a .5 tie of x/s (where a wrong quotient flips a code)."""
    rng = np.random.default_rng(seed)
    exps = rng.choice([-140.0, -120.0, -70.0, -63.0, -20.0, 0.0, 20.0, 100.0, 120.0], n)
    amax = (rng.random(n) + 0.5) * 2.0**exps
    s = (amax.astype(np.float32) / np.float32(qmax)).astype(np.float32)
    ties = rng.integers(-qmax, qmax, n) + 0.5
    x = (ties * s.astype(np.float64)).astype(np.float32)
    nudge = rng.integers(-3, 4, n)
    for _ in range(3):   # up to three ulps either way
        x = np.where(np.abs(nudge) > 1, np.nextafter(x, np.where(nudge > 0, np.inf, -np.inf).astype(np.float32)), x)
        nudge = np.sign(nudge) * np.maximum(np.abs(nudge) - 1, 0)
    uniform = rng.random(n) < 0.25
    x = np.where(uniform, ((rng.random(n) * 2 - 1) * amax).astype(np.float32), x).astype(np.float32)
    return x, s


@pytest.mark.parametrize("qmax", [127, 7])
def test_markstein_sequence_is_ieee_division(qmax):
    x, s = _cases(4000, qmax, qmax)
    ok = (s > 0) & np.isfinite(s)
    x, s = x[ok], s[ok]
    want = (x / s).astype(np.float32)                       # numpy: IEEE fp32 division, round to nearest even
    got = np.array([quotient(a, b) for a, b in zip(x, s)], dtype=np.float32)
    bad = np.flatnonzero(got != want)   # by value: the emulation has no −0 (its code is 0 either way)
    assert bad.size == 0, [(float(x[i]), float(s[i]), float(got[i]), float(want[i])) for i in bad[:5]]
    # the inputs reach the cases that matter: scales below 2^-64 (the 2^64 rescue) and quotients at a tie
    assert (s < TWO_M64).sum() > 100
    assert (np.abs(want - np.round(want)) == 0.5).sum() > 100


def test_without_the_correction_it_would_not_be():
    """The check has teeth: the plain ``x·RN(1/s)`` (no FMA correction) misses IEEE division on these inputs."""
    x, s = _cases(2000, 1, 127)
    k = np.where(s < np.float32(TWO_M64), np.float32(TWO_64), np.float32(1.0)).astype(np.float32)
    r = np.array([rn32(Fraction(1) / Fraction(float(b) * float(c))) for b, c in zip(s, k)], dtype=np.float32)
    plain = np.array([mul(mul(a, c), b) for a, b, c in zip(x, r, k)], dtype=np.float32)
    want = (x / s).astype(np.float32)
    assert (plain != want).sum() > 20
