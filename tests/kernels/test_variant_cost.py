"""Decision table lookup (data, not code) and the sympy cost model."""
import json

import sympy
import torch

from dvdq_compile.kernels import cost, variant
from dvdq_compile.kernels import launch as kernels


def test_default_is_split():
    assert kernels.choose_variant(17550, 3072, 3072, 8, "cpu") == "split"
    assert kernels.choose_variant(17550, 3072, 3072, 4, torch.device("cpu")) == "split"
    table = json.loads(variant.TABLE_PATH.read_text())
    assert table["default"] in variant.VARIANTS and isinstance(table["entries"], list)


def test_table_lookup_and_write(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    monkeypatch.setenv(variant.ENV_TABLE, str(path))
    assert kernels.choose_variant(4096, 1536, 1536, 4, "NVIDIA H100 80GB HBM3") == "split"   # missing file
    variant.write_table([
        {"device": "NVIDIA H100 80GB HBM3", "abits": 4, "N": 1536, "K": 1536, "M": 4096, "variant": "fused"},
        {"device": "NVIDIA H100 80GB HBM3", "abits": 4, "N": 1536, "K": 1536, "M": 75600, "variant": "split"},
        {"device": "NVIDIA H200", "abits": 4, "N": 1536, "K": 1536, "M": 4096, "variant": "split"},
    ])
    dev = "NVIDIA H100 80GB HBM3"
    assert kernels.choose_variant(4096, 1536, 1536, 4, dev) == "fused"
    assert kernels.choose_variant(8000, 1536, 1536, 4, dev) == "fused"      # nearest M on a log scale
    assert kernels.choose_variant(60000, 1536, 1536, 4, dev) == "split"
    assert kernels.choose_variant(4096, 1536, 1536, 8, dev) == "split"      # other abits: default
    assert kernels.choose_variant(4096, 1536, 1536, 4, "NVIDIA H200") == "split"
    assert kernels.choose_variant(sympy.Symbol("s0"), 1536, 1536, 4, dev) == "split"  # symbolic M: default
    # merging keeps old entries and replaces same keys
    variant.write_table([{"device": dev, "abits": 4, "N": 1536, "K": 1536, "M": 4096, "variant": "split"}])
    assert kernels.choose_variant(4096, 1536, 1536, 4, dev) == "split"
    assert len(json.loads(path.read_text())["entries"]) == 3


def test_cost_model_symbolic_and_numeric():
    q = cost.qlinear_cost(group=128)
    assert q["flops"].free_symbols == {cost.M, cost.N, cost.K}
    assert cost.evaluate(q["int_ops"], M=2, N=3, K=128) == 2 * 2 * 3 * 128
    # bytes: codes + scales + packed weights + (Δ, z) + bias + bf16 output
    assert cost.evaluate(q["bytes"], M=2, N=3, K=128) == 2 * 128 + 4 * 2 + 3 * 64 + 8 * 3 + 2 * 3 + 2 * 2 * 3
    a = cost.act_quant_cost(group=128, rotate=128, in_dtype=torch.bfloat16)
    assert cost.evaluate(a["bytes"], M=10, K=256) == 2 * 10 * 256 + 10 * 256 + 4 * 10 * 2
    assert cost.evaluate(a["flops"], M=10, K=256) == 2 * 10 * 256 * 128 + 4 * 10 * 256
    f = cost.fused_qlinear_cost(group=128, rotate=128, block_n=128)
    # prologue recomputed per N-tile: more FLOPs than split, fewer bytes than act_quant + qlinear
    vals = dict(M=17550, N=3072, K=3072)
    split_bytes = cost.evaluate(a["bytes"], **vals) + cost.evaluate(q["bytes"], **vals)
    assert cost.evaluate(f["bytes"], **vals) < split_bytes
    assert cost.evaluate(f["prologue_flops"], **vals) == 24 * (2 * 17550 * 3072 * 128 + 4 * 17550 * 3072)
    t = cost.roofline_seconds(q, 1979e12, 3.35e12, **vals)
    assert 1e-4 < t < 1e-3
    per_tok = cost.act_quant_cost(m=4, k=256, group=256, rotate=0)
    assert int(per_tok["bytes"]) == 2 * 2 * 4 * 256 + 4 * 256 + 4 * 4
