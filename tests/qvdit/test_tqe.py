"""TQE: at initialization it is the plain RTN-quantized layer; gradients reach every learned tensor via the STE."""
import pytest
import torch
from torch import nn

from dvdq_compile import quant
from dvdq_compile.qvdit.tqe import TQEConfig, TQELinear, fake_quant_act


def _lin(n=40, k=64, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, k, generator=g) / k**0.5)
        if bias:
            lin.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return lin


def _x(shape=(2, 24, 64), seed=1):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    x[0, 3] = 0.0                               # an all-zero token: no NaN
    return x


@pytest.mark.parametrize("wbits,abits", [(3, 6), (4, 6), (8, 8)])
def test_init_is_the_plain_quantized_layer_bit_exact(wbits, abits):
    lin, x = _lin(), _x()
    t = TQELinear(lin, TQEConfig(weight_bits=wbits, act_bits=abits), generator=torch.Generator().manual_seed(3))
    qw = quant.quantize_weight(lin.weight, quant.WeightSpec(bits=wbits, method="minmax", rotate=0))
    assert torch.equal(quant.pack(t.weight_codes(), wbits), qw.packed)
    assert torch.equal(t.wscale, qw.scale) and torch.equal(t.wzero, qw.zero)
    codes, scales = quant.quantize_act(x, abits, 64)
    plain = quant.qlinear_ref(codes, scales, qw.packed, qw.scale, qw.zero, lin.bias, wbits, torch.float32)
    assert torch.equal(t.integer_forward(x), plain)
    # the differentiable fake-quant agrees with the integer path up to fp32 summation order
    with torch.no_grad():
        y = t(x)
    torch.testing.assert_close(y, plain, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(y).all() and torch.equal(y[0, 3], lin.bias.detach())


def test_fake_quant_act_sym_equals_reference_quantizer():
    x = _x()
    codes, scales = quant.quantize_act(x, 6, 64)
    assert torch.equal(fake_quant_act(x, 6), quant.dequantize_act(codes, scales))
    xa = fake_quant_act(x, 6, sym=False)
    assert torch.isfinite(xa).all() and torch.equal(xa[0, 3], torch.zeros(64))
    # one-signed tokens (post-GELU-like): asymmetric has ~2x finer steps, so a smaller error
    xp = torch.nn.functional.gelu(x)
    e_sym = (fake_quant_act(xp, 6) - xp).square().mean()
    e_asym = (fake_quant_act(xp, 6, sym=False) - xp).square().mean()
    assert e_asym < 0.6 * e_sym


def test_gradients_reach_every_learned_tensor_through_the_ste():
    lin, x = _lin(), _x()
    t = TQELinear(lin, TQEConfig(3, 6, rank=4), generator=torch.Generator().manual_seed(3))
    t(x).square().sum().backward()
    # zero-init factors get gradients at once; their partners only once the zero factor moved (as in LoRA)
    assert t.lora_B.grad.abs().sum() > 0 and t.b1.grad.abs().sum() > 0
    assert t.lora_A.grad.abs().sum() == 0 and t.a1.grad.abs().sum() == 0
    with torch.no_grad():
        t.lora_B.normal_(0, 0.01)
        t.b1.normal_(0, 0.01)
    t.zero_grad()
    t(x).square().sum().backward()
    for name in ("lora_A", "lora_B", "a1", "b1"):
        g = getattr(t, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert t.weight.grad is None   # the FP weight stays frozen


def test_weight_offset_changes_codes_and_the_integer_path_follows():
    lin, x = _lin(), _x()
    t = TQELinear(lin, TQEConfig(3, 6, rank=4), generator=torch.Generator().manual_seed(3))
    c0 = t.weight_codes().clone()
    with torch.no_grad():
        t.lora_B.normal_(0, 0.5)
        t.b1.normal_(0, 0.1)
        y = t(x)
    assert not torch.equal(t.weight_codes(), c0)
    torch.testing.assert_close(t.integer_forward(x), y, rtol=1e-5, atol=1e-5)


def test_token_mask_scales_the_rank1_term_per_frame():
    lin = _lin()
    t = TQELinear(lin, TQEConfig(3, 16, rank=2), frames=4, generator=torch.Generator().manual_seed(3))
    x = _x((2, 4 * 6, 64))
    with torch.no_grad():
        t.b1.normal_(0, 0.1)
        base = t(x)
        t.mask[2] = 0.0
        y = t(x)
        t.b1.zero_()
        plain = t(x)
    frame = slice(12, 18)
    torch.testing.assert_close(y[:, frame], plain[:, frame])            # masked frame: no correction
    torch.testing.assert_close(y[:, :12], base[:, :12])                 # other frames untouched
    assert not torch.allclose(base[:, frame], plain[:, frame])
    t.b1.data.normal_(0, 0.1)
    t(x).sum().backward()
    assert t.mask.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="4 frames do not divide the token axis"):
        t(torch.randn(2, 7, 64))


def test_bad_config_and_input_are_clear_errors():
    with pytest.raises(ValueError, match=r"qvdit weight_bits=5 is not allowed; expected one of \(3, 4, 8\)"):
        TQEConfig(weight_bits=5)
    with pytest.raises(ValueError, match="qvdit act_bits=2"):
        TQEConfig(act_bits=2)
    with pytest.raises(ValueError, match="qvdit rank=0"):
        TQEConfig(rank=0)
    t = TQELinear(_lin(), TQEConfig())
    with pytest.raises(ValueError, match=r"expects inputs \[..., 64\], got shape \(3, 32\)"):
        t(torch.randn(3, 32))
    with pytest.raises(ValueError, match="asymmetric activations"):
        TQELinear(_lin(), TQEConfig(act_sym=False)).integer_forward(_x())
