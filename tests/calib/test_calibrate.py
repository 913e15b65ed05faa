import json

import pytest
import torch
from torch import nn

from dvdq_compile import Calibration, calibrate
from dvdq_compile.calibrate import weight_fingerprint
from tests.helpers import TinyDiT


def _inputs(seed, n=2):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(1, 32, 24, generator=g), torch.tensor([100.0 * (i + 1)])) for i in range(n)]


def test_statistics_match_the_inputs():
    model = TinyDiT()
    seen = {}
    h = model.blocks[0].to_q.register_forward_pre_hook(lambda m, a: seen.setdefault("x", []).append(a[0].clone()))
    cal = calibrate(model, lambda m: [m(x, t) for x, t in _inputs(0)], hessian=True)
    h.remove()
    x = torch.cat([v.reshape(-1, v.shape[-1]) for v in seen["x"]])
    st = cal.stats["blocks.0.to_q"]
    torch.testing.assert_close(st.absmax, x.abs().amax(0))
    assert st.tokens == x.shape[0] == 64
    torch.testing.assert_close(st.xtx, x.double().T @ x.double())
    assert set(cal.stats) == {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert cal.weights["blocks.0.to_q"] == weight_fingerprint(model.blocks[0].to_q.weight)
    assert not any(m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = TinyDiT()
    cal = calibrate(model, lambda m: [m(x, t) for x, t in _inputs(1)], hessian=True, meta={"seeds": [1]})
    path = cal.save(tmp_path / "cal.safetensors")
    back = Calibration.load(path)
    assert back.fingerprint == cal.fingerprint and back.weights == cal.weights
    for name, st in cal.stats.items():
        b = back.stats[name]
        assert torch.equal(b.absmax, st.absmax) and torch.equal(b.xtx, st.xtx) and b.tokens == st.tokens
    manifest = json.loads((tmp_path / "cal.safetensors.json").read_text())
    assert manifest["fingerprint"] == cal.fingerprint and manifest["meta"]["seeds"] == [1]


def test_fingerprint_tells_models_apart():
    a, b = TinyDiT(), TinyDiT()
    assert weight_fingerprint(a.blocks[0].to_q.weight) == weight_fingerprint(b.blocks[0].to_q.weight)
    with torch.no_grad():
        b.blocks[0].to_q.weight.mul_(1.01)
    cal = calibrate(a, lambda m: m(*_inputs(0, 1)[0]))
    with pytest.raises(ValueError, match="different model.*blocks.0.to_q"):
        cal.check("blocks.0.to_q", b.blocks[0].to_q.weight)
    cal.check("blocks.0.to_k", b.blocks[0].to_k.weight)  # unchanged layer passes


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="no nn.Linear"):
        calibrate(nn.ReLU(), lambda m: m(torch.ones(2)))
    with pytest.raises(ValueError, match="did not call"):
        calibrate(TinyDiT(), lambda m: None)
    with pytest.raises(FileNotFoundError, match="no file at"):
        Calibration.load(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"a": torch.ones(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a dvdq calibration"):
        Calibration.load(tmp_path / "other.safetensors")
