"""qvdit artifact: safetensors + manifest round trip bit-exact; another model's weights are refused."""
import json

import pytest
import torch

from dvdq_compile.qvdit import swap
from dvdq_compile.qvdit.artifact import QVDiTArtifact
from dvdq_compile.zoo import build_model

CFG = swap.QVDiTConfig(weight_bits=3, act_bits=6, rank=4, mlp_w8a8=True)


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model({"num_layers": 1, "ffn_dim": 256}).eval().requires_grad_(False)


def _inputs():
    g = torch.Generator().manual_seed(5)
    return {"hidden_states": torch.randn(1, 3, 4, 8, 8, generator=g), "timestep": torch.tensor([400.0]),
                "encoder_hidden_states": torch.randn(1, 4, 128, generator=g), "return_dict": False}


def _trained(seed=0):
    m = _model(seed)
    layers = swap.install(m, CFG, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():   # stand-in for training: every learned tensor non-trivial
        for t in layers.values():
            for p in t.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m


def test_round_trip_bit_exact(tmp_path):
    m = _trained()
    art = QVDiTArtifact.from_model(m, CFG, meta={"expert": "high"})
    path = art.save(tmp_path / "q.safetensors")
    man = json.loads((tmp_path / "q.safetensors.json").read_text())
    assert man["recipe"] == "qvdit" and man["config"]["weight_bits"] == 3 and man["config"]["act_bits"] == 6
    assert man["kept_w8a8"] == ["blocks.0.ffn.net.0.proj", "blocks.0.ffn.net.2"]
    assert man["layers"]["blocks.0.attn2.to_k"]["config"]["act_bits"] == 16
    back = QVDiTArtifact.load(path)
    assert back.fingerprint == art.fingerprint and back.layers == art.layers and back.cfg == art.cfg
    for n, ts in art.tensors.items():
        assert ts.keys() == back.tensors[n].keys()
        for k in ts:
            assert torch.equal(ts[k], back.tensors[n][k]), (n, k)
    fresh = _model()
    back.apply(fresh)
    swap.set_integer(m)
    swap.set_integer(fresh)
    with torch.no_grad():
        assert torch.equal(fresh(**_inputs())[0], m(**_inputs())[0])
        swap.set_integer(fresh, False)
        assert not torch.equal(fresh(**_inputs())[0], _model()(**_inputs())[0])


def test_other_model_is_refused(tmp_path):
    path = QVDiTArtifact.from_model(_trained(), CFG).save(tmp_path / "q.safetensors")
    with pytest.raises(ValueError, match=r"trained for a different model: layer 'blocks\.0\.attn1\.to_q' has weight "
                                         r"fingerprint \w+, the artifact expects \w+"):
        QVDiTArtifact.load(path).apply(_model(seed=7))
    small = build_model({"num_layers": 1, "ffn_dim": 256, "num_attention_heads": 1})
    with pytest.raises(ValueError, match="different model"):
        QVDiTArtifact.load(path).apply(small)


def test_corrupt_and_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no manifest"):
        QVDiTArtifact.load(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError, match="no file at"):
        QVDiTArtifact.load(tmp_path / "missing.safetensors")
    m = _trained()
    art = QVDiTArtifact.from_model(m, CFG)
    man = art.manifest()
    man["fingerprint"] = "0" * 16
    flat = {f"{n}::{k}": v.contiguous() for n, ts in art.tensors.items() for k, v in ts.items()}
    save_file(flat, str(tmp_path / "bad.safetensors"), metadata={"manifest": json.dumps(man)})
    with pytest.raises(ValueError, match="corrupt"):
        QVDiTArtifact.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="no TQE layers"):
        QVDiTArtifact.from_model(_model(), CFG)
