"""bench/quality_seeds.py: paired per-video differences pooled over seeds."""
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import quality_seeds  # noqa: E402


def _doc(seed, ours, peer):
    return {"setup": {"seed": seed, "classes": list(range(len(ours))), "steps": 10, "guidance": 3.0,
                      "device": "cpu", "zoo": "v2"},
            "rows": [{"label": "A", "psnr": sum(ours) / len(ours), "psnr_per_video": ours},
                     {"label": "B", "psnr": sum(peer) / len(peer), "psnr_per_video": peer}]}


def test_pooled_mean_and_standard_error():
    docs = [_doc(0, [10.0, 12.0], [9.0, 10.0]), _doc(1, [11.0, 11.0], [11.0, 8.0])]
    q = quality_seeds.paired(docs, "A", "B")
    d = [1.0, 2.0, 0.0, 3.0]
    sd = math.sqrt(sum((x - 1.5) ** 2 for x in d) / 3)
    assert q["mean_db"] == 1.5 and q["n_videos"] == 4 and q["se_db"] == round(sd / 2, 3)
    assert q["per_seed"] == {0: 1.5, 1: 1.5} and q["outside_2se"] == (1.5 > 2 * sd / 2)


def test_missing_rows_or_videos_are_errors():
    with pytest.raises(KeyError, match="'C'"):
        quality_seeds.paired([_doc(0, [1.0], [2.0])], "A", "C")
    bad = _doc(0, [1.0, 2.0], [2.0])
    with pytest.raises(ValueError, match="unequal length"):
        quality_seeds.paired([bad], "A", "B")


def test_cli_writes_tables_and_refuses_repeated_seeds(tmp_path):
    f0, f1 = tmp_path / "s0.json", tmp_path / "s1.json"
    f0.write_text(json.dumps(_doc(0, [10.0, 12.0], [9.0, 10.0])))
    f1.write_text(json.dumps(_doc(1, [11.0, 11.0], [11.0, 8.0])))
    assert quality_seeds.main([str(f0), str(f1), "--ours", "A", "--peers", "B", "--out", str(tmp_path),
                               "--stem", "t"]) == 0
    assert "| B | +1.50 |" in (tmp_path / "t.md").read_text()
    with pytest.raises(SystemExit):
        quality_seeds.main([str(f0), str(f0), "--ours", "A", "--peers", "B", "--out", str(tmp_path)])
