"""The structure wan_zoo v2 is trained with (dvdq_compile/zoo/structure.py): heavy-tailed init, fixed outlier
modulation channels and super weights that survive optimizer steps and travel with the checkpoint."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvdq_compile import stats
from dvdq_compile.zoo import build_model, load_checkpoint
from dvdq_compile.zoo import structure as S

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def imposed():
    torch.manual_seed(0)
    m = build_model()
    return m, S.impose(m, seed=3)


def test_weights_are_heavy_tailed_with_the_default_std(imposed):
    m, _ = imposed
    w = m.blocks[0].attn1.to_q.weight.detach()
    s = stats.weight_stats(w)
    # Student-t(5): kurtosis 9 in theory; a sample of 65k lands well above Gaussian (3)
    assert s["kurtosis"] > 4.5 and s["rotation_ratio"] < 0.8
    assert float(w.std()) == pytest.approx(1 / math.sqrt(3 * w.shape[1]), rel=0.1)
    summ = stats.summary(stats.weight_card(m), None)
    for k in ("median_kurtosis", "share_kurtosis_ge_3", "beyond_3sigma", "median_rotation_ratio",
              "median_max_over_std", "max_max_over_std"):
        assert summ[k]["met"], (k, summ[k])


def test_fixed_entries_where_documented(imposed):
    m, imp = imposed
    dim = m.blocks[0].scale_shift_table.shape[-1]
    massive = [(n, i, v) for n, i, v in imp.entries if abs(v) == S.MASSIVE_SHIFT]
    assert len(massive) == len(S.MASSIVE)
    for (b, where), (n, i, v) in zip(S.MASSIVE, massive):
        assert n == f"blocks.{b}.scale_shift_table"
        assert i // dim == (S.SHIFT_MSA if where == "attn" else S.SHIFT_FFN)
    scaled = sorted(v + 1 for n, i, v in imp.entries
                    if n.endswith("scale_shift_table") and i // dim in (S.SCALE_MSA, S.SCALE_FFN) and v != 0)
    assert scaled == sorted(list(S.SCALED) * 2 * len(m.blocks))
    supers = [(n, v) for n, i, v in imp.entries if n.endswith("ffn.net.2.weight")]
    assert len(supers) == len(S.SUPER_SIGMAS)
    w = m.blocks[-1].ffn.net[2].weight.detach()
    assert float(w.abs().max()) / (1 / math.sqrt(3 * w.shape[1])) == pytest.approx(S.SUPER_SIGMAS[-1], rel=1e-5)


def test_restore_undoes_an_optimizer_step_on_fixed_entries_only():
    torch.manual_seed(0)
    m = build_model()
    imp = S.impose(m, seed=1)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    imp.restore(m)
    params = dict(m.named_parameters())
    for n, i, v in imp.entries:
        assert float(params[n].view(-1)[i]) == pytest.approx(v, rel=1e-6, abs=1e-7)
    moved = [k for k in before if not torch.equal(before[k], m.state_dict()[k])]
    assert "blocks.0.scale_shift_table" in moved  # the rest of the table trains


def test_describe_round_trip():
    imp = S.Imposed(entries=[("a.b", 3, 2.5), ("c", 0, -1.0)], seed=9)
    back = S.Imposed.from_meta(json.loads(json.dumps(imp.describe())))
    assert back == imp and imp.summary()["fixed_entries"] == 2


def test_train_script_keeps_the_structure_through_fine_tune(tmp_path):
    """Two steps of a v2 main run, one step of a low-noise fine-tune from it: the fixed entries are intact in both
    checkpoints and the fine-tune finds them in the metadata."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"}
    common = ["--out-dir", str(tmp_path), "--state-dir", str(tmp_path / "st"), "--batch", "2", "--no-nice",
              "--log-every", "1", "--ema", "0"]
    subprocess.run([sys.executable, str(REPO / "bench/zoo/train.py"), "--expert", "main", "--structure", "v2",
                    "--name", "m", "--steps", "2", *common], check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, str(REPO / "bench/zoo/train.py"), "--expert", "low", "--name", "l",
                    "--init", str(tmp_path / "m.safetensors"), "--steps", "1", *common], check=True, env=env,
                   capture_output=True)
    for stem in ("m", "l"):
        model, _, meta = load_checkpoint(tmp_path / f"{stem}.safetensors")
        imp = S.Imposed.from_meta(json.loads(meta["imposed"]))
        params = dict(model.named_parameters())
        for n, i, v in imp.entries:  # fp16 checkpoint: within its rounding
            assert float(params[n].view(-1)[i]) == pytest.approx(v, rel=1e-3, abs=1e-3), (stem, n, i)
        info = json.loads((tmp_path / f"{stem}.json").read_text())
        assert info["imposed_structure"]["fixed_entries"] == len(imp.entries)
