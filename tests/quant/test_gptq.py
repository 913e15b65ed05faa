"""GPTQ reference: beats RTN on correlated inputs, equals RTN with H = I, act_order round trip, stable errors."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile.quant.gptq import GPTQConfig, gptq
from dvdq_compile.quant.minmax import dequantize, minmax


def _correlated(m, k, seed):
    """Tokens with strongly correlated channels and a few loud ones (what GPTQ's error feedback exploits)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, max(2, k // 8), generator=g)
    mix = torch.randn(base.shape[1], k, generator=g)
    x = base @ mix + 0.1 * torch.randn(m, k, generator=g)
    x[:, : max(1, k // 32)] *= 8
    return x


def _out_err(x, w, codes, scale, zero):
    return float((x.double() @ (w.double() - dequantize(codes, scale, zero).double()).T).norm())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,k,group", [(48, 128, 64), (33, 256, 0), (64, 192, 64)])
def test_beats_rtn_on_correlated_inputs(seed, n, k, group):
    x = _correlated(512, k, seed)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(100 + seed)) / k ** 0.5
    h = x.double().T @ x.double()
    q = gptq(w, h, GPTQConfig(bits=4, group=group))
    rtn = minmax(w, 4, group or None)
    e_g, e_r = _out_err(x, w, *q), _out_err(x, w, *rtn)
    assert e_g < 0.8 * e_r, (e_g, e_r)


@settings(max_examples=12, deadline=None)
@given(n=st.integers(1, 40), kb=st.integers(1, 4), group=st.sampled_from([0, 64]), seed=st.integers(0, 99),
       act_order=st.booleans())
def test_identity_hessian_is_rtn_and_codes_in_range(n, kb, group, seed, act_order):
    k = 64 * kb
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 3
    codes, scale, zero = gptq(w, torch.eye(k, dtype=torch.float64), GPTQConfig(group=group, act_order=act_order))
    rc, rs, rz = minmax(w, 4, group or None)
    assert torch.equal(codes, rc) and torch.equal(scale, rs) and torch.equal(zero, rz)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert scale.shape == (n, k // (group or k)) and int(zero.min()) >= 0 and int(zero.max()) <= 15


def test_act_order_round_trip():
    """With a diagonal H (no propagation) act_order must give exactly the unpermuted result: the inverse
    permutation puts each column's code back in place. With a full H it still beats RTN."""
    k, n = 128, 16
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(3))
    d = torch.rand(k, generator=torch.Generator().manual_seed(4)) + 0.5
    h = torch.diag(d).double()
    a = gptq(w, h, GPTQConfig(group=64, act_order=True))
    b = gptq(w, h, GPTQConfig(group=64, act_order=False))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    x = _correlated(400, k, 5)
    hf = x.double().T @ x.double()
    qa = gptq(w, hf, GPTQConfig(group=0, act_order=True))
    assert _out_err(x, w, *qa) < 0.8 * _out_err(x, w, *minmax(w, 4, None))


def test_deterministic_dead_columns_and_zero_rows():
    k = 128
    x = _correlated(300, k, 7)
    x[:, 5] = 0  # dead channel
    h = x.double().T @ x.double()
    w = torch.randn(8, k)
    w[2] = 0  # all-zero row: scale stays finite, codes equal the zero point
    a, b = gptq(w, h), gptq(w, h)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    codes, scale, zero = a
    assert torch.isfinite(scale).all()
    deq = dequantize(codes, scale, zero)
    assert torch.all(deq[:, 5] == 0) and torch.all(deq[2] == 0)


def test_singular_hessian_retries_and_clear_errors():
    k = 64
    x = torch.randn(4, k)  # rank 4 << 64: undamped H is singular; the damping makes it factorisable
    q = gptq(torch.randn(8, k), x.double().T @ x.double(), GPTQConfig(group=0))
    assert q[0].shape == (8, k)
    bad = -torch.eye(k, dtype=torch.float64)  # negative definite: no damping helps
    with pytest.raises(ValueError, match="not positive definite"):
        gptq(torch.randn(8, k), bad, GPTQConfig(group=0, max_damp_tries=3))
    with pytest.raises(ValueError, match="does not match"):
        gptq(torch.randn(8, k), torch.eye(32), GPTQConfig(group=0))
    with pytest.raises(ValueError, match="multiple of group"):
        GPTQConfig(group=96, block=128)
