"""How the quality ranking changed from zoo v1 (uniform weights) to v2 (real-DiT statistics), and how big the noise is.

Reads ``dvdq eval`` results (JSON) for v1, v2 and a v2 repeat with another seed; writes
``<out>/<stem>.{md,json}`` (default stem ``quality_v1_vs_v2``):

* every row present in v1 and v2: PSNR and rank in each (rank 1 = best PSNR among the rows of that table);
* on v2, the questions the project asks of its method: BGR+ARQ W4A4 against MinMax, SmoothQuant and QuaRot W4A4, and
  δ-GBS against W4A8 (with its average activation bits);
* the noise of a PSNR difference between two rows, two ways: (1) the standard error of the mean of the paired
  per-video PSNR differences (one video per class; needs ``psnr_per_video``, recorded by the harness since v2), and
  (2) the same difference measured again at the repeat's seed.

    python bench/quality_compare.py [--v1 bench/results/quality.json] [--v2 bench/results/quality_v2.json]
                                    [--repeat bench/results/quality_v2_seed1.json] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

W4A4 = ("MinMax W4A4", "SmoothQuant W4A4", "QuaRot W4A4")
OURS_A4 = "BGR+ARQ W4A4"
DELTA = "DVD-Quant δ-GBS W4A4/8"
A8_REFS = ("BGR+ARQ W4A8", "MinMax W4A8")


def _rows(doc: dict) -> dict:
    return {r["label"]: r for r in doc["rows"]}


def _ranks(rows: dict) -> dict:
    order = sorted(rows, key=lambda k: -rows[k]["psnr"])
    return {k: i + 1 for i, k in enumerate(order)}


def paired(a: dict, b: dict) -> dict | None:
    """Mean and standard error of the per-video PSNR differences ``a − b`` (None without per-video PSNRs)."""
    pa, pb = a.get("psnr_per_video") or [], b.get("psnr_per_video") or []
    d = [x - y for x, y in zip(pa, pb) if math.isfinite(x) and math.isfinite(y)]
    if len(pa) != len(pb) or len(d) < 2:
        return None
    m = sum(d) / len(d)
    var = sum((x - m) ** 2 for x in d) / (len(d) - 1)
    return {"mean": m, "se": math.sqrt(var / len(d)), "videos": len(d)}


def compare(v1: dict, v2: dict, repeat: dict | None = None) -> dict:
    r1, r2 = _rows(v1), _rows(v2)
    rr = _rows(repeat) if repeat else {}
    k1, k2 = _ranks(r1), _ranks(r2)
    common = [k for k in r2 if k in r1]
    table = [{"label": k, "psnr_v1": r1[k]["psnr"], "rank_v1": k1[k], "psnr_v2": r2[k]["psnr"], "rank_v2": k2[k],
              "avg_act_bits": r2[k]["avg_act_bits"]} for k in common]

    def diff(a: str, b: str) -> dict | None:
        if a not in r2 or b not in r2:
            return None
        out = {"a": a, "b": b, "v2": r2[a]["psnr"] - r2[b]["psnr"],
               "v1": r1[a]["psnr"] - r1[b]["psnr"] if a in r1 and b in r1 else None,
               "paired": paired(r2[a], r2[b]),
               "repeat": rr[a]["psnr"] - rr[b]["psnr"] if a in rr and b in rr else None}
        return out

    questions = [d for d in (diff(OURS_A4, b) for b in W4A4) if d]
    questions += [d for d in (diff(DELTA, b) for b in A8_REFS) if d]
    noise = [{"label": k, "psnr_seed_main": r2[k]["psnr"], "psnr_seed_repeat": rr[k]["psnr"],
              "delta": rr[k]["psnr"] - r2[k]["psnr"]} for k in rr if k in r2]
    env = v2.get("env", {})
    return {"env": env, "setup_v1": v1.get("setup"), "setup_v2": v2.get("setup"),
            "setup_repeat": repeat.get("setup") if repeat else None, "table": table, "questions": questions,
            "noise": noise, "delta_bits": r2[DELTA]["avg_act_bits"] if DELTA in r2 else None}


def _f(v, fmt="{:+.2f}"):
    return "-" if v is None else fmt.format(v)


def markdown(res: dict) -> str:
    env, s2 = res["env"], res["setup_v2"] or {}
    L = ["# Quality on zoo v1 (uniform weights) vs v2 (real-DiT statistics)", "",
         f"Device: {env.get('device', '?')}; torch {env.get('torch', '?')}, triton {env.get('triton', '?')}; "
         f"{env.get('date', '?')}. v2: {len(s2.get('classes', []))} classes, seed {s2.get('seed')}, "
         f"{s2.get('steps')} Euler steps, CFG {s2.get('guidance')}, kernels {s2.get('kernels')}; v1 as in "
         "`quality.md`. Rank 1 = best PSNR within the table.", "",
         "| method | v1 PSNR dB | v1 rank | v2 PSNR dB | v2 rank | rank change | avg A bits |",
         "|---|---:|---:|---:|---:|---:|---:|"]
    for t in sorted(res["table"], key=lambda t: t["rank_v2"]):
        ch = t["rank_v1"] - t["rank_v2"]
        L.append(f"| {t['label']} | {t['psnr_v1']:.2f} | {t['rank_v1']} | {t['psnr_v2']:.2f} | {t['rank_v2']} | "
                 f"{'=' if ch == 0 else f'{ch:+d}'} | {t['avg_act_bits']:.2f} |")
    L += ["", "## The questions, on v2", "",
          "PSNR difference a − b in dB; noise: standard error of the mean paired per-video difference (seed "
          f"{s2.get('seed')}), and the same difference at the repeat's seed"
          + (f" ({res['setup_repeat']['seed']})" if res.get("setup_repeat") else "") + ".", "",
          "| a | b | v2 | ± SE (paired, per video) | at the repeat seed | v1 |", "|---|---|---:|---:|---:|---:|"]
    for q in res["questions"]:
        p = q["paired"]
        L.append(f"| {q['a']} | {q['b']} | **{_f(q['v2'])}** | {_f(p['se'], '{:.2f}') if p else '-'} | "
                 f"{_f(q['repeat'])} | {_f(q['v1'])} |")
    if res["delta_bits"] is not None:
        L += ["", f"δ-GBS ran at {res['delta_bits']:.2f} average activation bits."]
    if res["noise"]:
        L += ["", "## Seed repeat", "", "| method | PSNR seed main | PSNR repeat seed | change |", "|---|---:|---:|---:|"]
        for n in res["noise"]:
            L.append(f"| {n['label']} | {n['psnr_seed_main']:.2f} | {n['psnr_seed_repeat']:.2f} | {_f(n['delta'])} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--v1", default=str(ROOT / "bench/results/quality.json"))
    p.add_argument("--v2", default=str(ROOT / "bench/results/quality_v2.json"))
    p.add_argument("--repeat", default=str(ROOT / "bench/results/quality_v2_seed1.json"))
    p.add_argument("--out", default=str(ROOT / "bench/results"))
    p.add_argument("--stem", default="quality_v1_vs_v2", help="output file stem (default quality_v1_vs_v2)")
    a = p.parse_args(argv)
    docs = {}
    for k in ("v1", "v2", "repeat"):
        path = Path(getattr(a, k))
        if not path.is_file():
            if k == "repeat":
                docs[k] = None
                continue
            p.error(f"--{k}: {path} not found (write it with `python -m dvdq_compile.cli eval`)")
        docs[k] = json.loads(path.read_text())
    res = compare(docs["v1"], docs["v2"], docs["repeat"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{a.stem}.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
