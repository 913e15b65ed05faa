"""Pooled over seeds: is a PSNR difference between two quantization rows outside the noise?

Reads several ``dvdq eval`` results (JSON, with ``psnr_per_video``) of the same rows at different seeds. Each video
(class × seed) is one paired sample: the difference of the two rows' PSNR on it. Per pair of rows it reports the
mean difference over all videos, its standard error (sample sd / √n), the mean per seed, and whether the mean is
more than two standard errors from zero. Videos of different seeds are independent draws of the initial noise, so
pooling them shrinks the standard error by √(seeds).

    python bench/quality_seeds.py RESULT.json [RESULT.json ...] [--ours "BGR+ARQ W4A4"]
                                  [--peers "MinMax W4A4" "SmoothQuant W4A4" "QuaRot W4A4"] [--stem quality_v2_a4_seeds]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "bench") not in sys.path:
    sys.path.insert(0, str(ROOT / "bench"))

from quality_compare import paired as paired_stats  # noqa: E402


def paired(docs: list[dict], a: str, b: str) -> dict:
    """Differences ``a − b`` per video pooled over ``docs`` (each a ``dvdq eval`` result holding both rows); the
    statistics are ``quality_compare.paired``'s on the concatenated videos."""
    pa_all, pb_all, per_seed = [], [], {}
    for d in docs:
        rows = {r["label"]: r for r in d["rows"]}
        if a not in rows or b not in rows:
            raise KeyError(f"seed {d['setup']['seed']}: rows {a!r} and {b!r} must both be present")
        pa, pb = rows[a].get("psnr_per_video"), rows[b].get("psnr_per_video")
        if not pa or not pb or len(pa) != len(pb):
            raise ValueError(f"seed {d['setup']['seed']}: per-video PSNR missing or of unequal length for {a!r}/{b!r}")
        pa_all += pa
        pb_all += pb
        per_seed[d["setup"]["seed"]] = round(statistics.fmean(x - y for x, y in zip(pa, pb)), 3)
    s = paired_stats({"psnr_per_video": pa_all}, {"psnr_per_video": pb_all})
    if s is None:
        raise ValueError(f"{a!r} vs {b!r}: fewer than two finite per-video PSNR pairs")
    return {"a": a, "b": b, "mean_db": round(s["mean"], 3), "se_db": round(s["se"], 3), "n_videos": s["videos"],
            "per_seed": per_seed, "outside_2se": abs(s["mean"]) > 2 * s["se"]}


def psnr_by_seed(docs: list[dict], label: str) -> dict:
    return {d["setup"]["seed"]: round({r["label"]: r for r in d["rows"]}[label]["psnr"], 2) for d in docs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="dvdq eval JSON files of the same rows at different seeds")
    p.add_argument("--ours", default="BGR+ARQ W4A4")
    p.add_argument("--peers", nargs="+", default=["MinMax W4A4", "SmoothQuant W4A4", "QuaRot W4A4"])
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--stem", default="quality_v2_a4_seeds")
    a = p.parse_args(argv)
    docs = [json.loads(Path(f).read_text()) for f in a.results]
    seeds = [d["setup"]["seed"] for d in docs]
    if len(set(seeds)) != len(seeds):
        p.error(f"each result must have its own seed, got {seeds}")
    pairs = [paired(docs, a.ours, peer) for peer in a.peers]
    setup = docs[0]["setup"]
    res = {"files": a.results, "seeds": seeds, "classes": setup["classes"], "steps": setup["steps"],
           "zoo": setup.get("zoo"), "pairs": pairs,
           "psnr": {lab: psnr_by_seed(docs, lab) for lab in [a.ours, *a.peers]}}
    out = Path(a.out)
    (out / f"{a.stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# {a.ours} vs its peers, pooled over {len(seeds)} seeds", "",
             f"Zoo {res['zoo']}, {len(setup['classes'])} classes × seeds {seeds} = {pairs[0]['n_videos']} videos, "
             f"{setup['steps']} steps, CFG {setup['guidance']}, device {setup['device']}. Difference = "
             f"PSNR({a.ours}) − PSNR(peer) per video, averaged (the tables' row PSNR pools the MSE of all videos, "
             "so it can differ by a few tenths); SE = sd / √videos. From: "
             + ", ".join(f"`{Path(f).name}`" for f in a.results) + " (`bench/quality_seeds.py`).", "",
             "| peer | mean difference (dB) | SE (dB) | outside 2 SE | per seed |", "|---|---|---|---|---|"]
    for q in pairs:
        lines.append(f"| {q['b']} | {q['mean_db']:+.2f} | {q['se_db']:.2f} | {'yes' if q['outside_2se'] else 'no'} | "
                     + ", ".join(f"seed {s}: {v:+.2f}" for s, v in q["per_seed"].items()) + " |")
    lines += ["", "| row | " + " | ".join(f"PSNR seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for lab, v in res["psnr"].items():
        lines.append(f"| {lab} | " + " | ".join(f"{v[s]:.2f}" for s in seeds) + " |")
    (out / f"{a.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
