"""The eager evaluation path: an untrained swap is exactly the backend's MinMax recipe at the same bits."""
import copy

import torch

from dvdq_compile.qvdit import swap
from dvdq_compile.qvdit.evaluate import flop_weighted_bits
from dvdq_compile.zoo import build_model
from tests.helpers import compiled


def _model():
    torch.manual_seed(0)
    return build_model({"num_layers": 1, "ffn_dim": 256}).eval().requires_grad_(False)


def _inputs():
    g = torch.Generator().manual_seed(5)
    return {"hidden_states": torch.randn(2, 3, 4, 8, 8, generator=g), "timestep": torch.tensor([400.0, 400.0]),
            "encoder_hidden_states": torch.randn(2, 4, 128, generator=g), "return_dict": False}


def test_untrained_eager_swap_equals_backend_minmax_w3a6():
    m = _model()
    eager = copy.deepcopy(m)
    swap.install(eager, swap.QVDiTConfig(weight_bits=3, act_bits=6, mlp_w8a8=False, lora=False))
    swap.set_integer(eager)
    with torch.no_grad():
        ye = eager(**_inputs())[0]
        yb = compiled(m, recipe="minmax", weight_bits=3, act_bits=6)(**_inputs())[0]
        fp = m(**_inputs())[0]
    torch.testing.assert_close(ye, yb, rtol=1e-5, atol=1e-5)
    assert (ye - fp).norm() > 1e-3 * fp.norm()


def test_flop_weighted_bits_faithful():
    m = _model()
    b = flop_weighted_bits(m, swap.QVDiTConfig(weight_bits=3, act_bits=6, mlp_w8a8=True), 64, 4)
    d, f, s, t = 256, 256, 64, 4
    attn = 6 * s * d * d            # q k v o, cross q o on video tokens
    kv = 2 * t * d * d              # cross k v on text tokens (16-bit activations)
    mlp = 2 * s * d * f
    tot = attn + kv + mlp
    assert abs(b["weight_bits"] - (3 * (attn + kv) + 8 * mlp) / tot) < 1e-9
    assert abs(b["act_bits"] - (6 * attn + 16 * kv + 8 * mlp) / tot) < 1e-9
