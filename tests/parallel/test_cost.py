"""The scaling cost model (dvdq_compile/parallel/cost.py) against counts it does not compute itself."""
from __future__ import annotations

import json
import pathlib

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dvdq_compile.parallel import cost
from tests.models.tiny import wan, wan_inputs


def test_linear_flops_match_torch_flop_counter():
    """One Wan block's linear FLOPs as torch counts them (S = 128 video tokens, L = 24 text tokens)."""
    m = wan(num_layers=1)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        m(**wan_inputs())
    counted = sum(fc.get_flop_counts()["WanTransformer3DModel.blocks.0"].values())
    assert cost.linear_flops(128, 24, 128, 256) == counted


def test_ulysses_bytes_are_the_all_to_all_volume():
    """4 tensors of (S/u)·d elements per rank, of which (u−1)/u leave the rank; nothing on one rank."""
    assert cost.ulysses_bytes(4096, 64, 1) == 0
    s, d, u = 4096, 64, 4
    per_tensor = (s // u) * d * 2  # bf16 shard
    assert cost.ulysses_bytes(s, d, u) == 4 * per_tensor * (u - 1) / u


def test_tokens_of_wan_720p():
    # 81 frames -> 21 latent frames; 720x1280 -> 90x160 latents -> 45x80 patches
    assert cost.WAN_14B.tokens(81, 720, 1280) == 21 * 45 * 80


def test_step_time_parts_and_errors():
    tok = cost.WAN_14B.tokens(81, 720, 1280)
    one = cost.step_seconds(cost.WAN_14B, tok, 1, ulysses=1, cfg=1, precision="bf16")
    eight = cost.step_seconds(cost.WAN_14B, tok, 8, ulysses=4, cfg=2, precision="bf16")
    assert one["comm"] == 0 and eight["comm"] > 0
    assert eight["linear"] == pytest.approx(one["linear"] / 8) and eight["attention"] == pytest.approx(
        one["attention"] / 8)
    q = cost.step_seconds(cost.WAN_14B, tok, 1, ulysses=1, cfg=1, precision="w4a8")
    assert q["linear"] < one["linear"] and q["attention"] == one["attention"]
    with pytest.raises(ValueError, match="cfg\\*ulysses"):
        cost.step_seconds(cost.WAN_14B, tok, 8, ulysses=2, cfg=2, precision="bf16")
    with pytest.raises(ValueError, match="divide the 40 heads"):
        cost.step_seconds(cost.WAN_14B, tok, 3, ulysses=3, cfg=1, precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        cost.step_seconds(cost.WAN_14B, tok, 1, ulysses=1, cfg=1, precision="fp8")


def test_committed_table_is_what_the_model_computes():
    """bench/results/scaling.json is the model's output for its own recorded assumptions (rerun bench/scaling.py
    after changing the model)."""
    import bench.scaling as scaling
    saved = json.loads((pathlib.Path(scaling.__file__).parent / "results" / "scaling.json").read_text())
    rows = scaling.table(cost.Efficiency(**saved["meta"]["eff"]))
    assert [round(r["step_s"], 6) for r in rows] == [round(r["step_s"], 6) for r in saved["rows"]]
    eight = [r for r in rows if r["gpus"] == 8 and r["precision"] == "bf16"]
    assert max(r["speedup"] for r in eight) >= 6.0
