"""The static instrument against a GPU measurement: ``sass.json``'s estimated times next to what
``bench/first_window.py`` timed, per kernel variant, tile and Wan shape.

The instrument (``bench/sass.py``) models an H100 SXM (1830 MHz, 3.35 TB/s); the first window measured an H200
(same SMs and clocks, 4.8 TB/s). The GEMMs at M = 32,760 are compute-bound on both, so the ratio measured /
estimated is the model's error, not the machine's difference (the HBM-bound act_quant rows are compared too, but
there the H200's faster memory favours the measurement).

Pairs (first window's name → instrument's kernel, variant, tile):

- ``w4a8_forced_128x128`` / ``w4a8_forced_128x64`` → qlinear ``W4→int8 g128`` at 128x128/8w/3s / 128x64/4w/4s;
- ``w4a8_packed`` (forced 128x128/8w/3s) → qlinear ``W4 g128`` 128x128/8w/3s;
- ``w4a8_auto`` / ``w4a8_per_token`` (autotuned over first_window.CONFIGS) → the best estimate of ``W4→int8 g128``
  / ``W4→int8 per-token`` over those same three tiles;
- ``gelu_quant`` (forced 64x128/4w/4s) → gelu_quant at that tile; ``act_quant`` and ``norm_quant`` → the
  instrument's ``act_quant_us`` / ``norm_quant_us`` of the shape.

    python bench/sass_vs_gpu.py [--sass bench/results/sass.json] [--gpu bench/results/first_window_h200.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUTOTUNE_TILES = ("128x64/4w/4s", "128x128/8w/3s", "64x128/4w/4s")   # first_window.CONFIGS
PAIRS = {  # first-window name -> (kernel, variant, tile or None for the best of AUTOTUNE_TILES)
    "w4a8_forced_128x128": ("qlinear", "W4→int8 g128", "128x128/8w/3s"),
    "w4a8_forced_128x64": ("qlinear", "W4→int8 g128", "128x64/4w/4s"),
    "w4a8_packed": ("qlinear", "W4 g128", "128x128/8w/3s"),
    "w4a8_auto": ("qlinear", "W4→int8 g128", None),
    "w4a8_per_token": ("qlinear", "W4→int8 per-token", None),
    "gelu_quant": ("gelu_quant", "W4→int8 g128 +GELU→A8 g128 r128", "64x128/4w/4s"),
}


def estimate(rows: list[dict], n: int, k: int, kernel: str, variant: str, tile: str | None) -> tuple[float, str] | None:
    """(estimated µs, tile) for one pairing, or None when the instrument has no such row."""
    cand = [r for r in rows if (r["N"], r["K"], r["kernel"], r["variant"]) == (n, k, kernel, variant)
            and (r["tile"] == tile if tile else r["tile"] in AUTOTUNE_TILES)]
    if not cand:
        return None
    best = min(cand, key=lambda r: r["est_us"])
    return float(best["est_us"]), best["tile"]


def compare(sass: dict, gpu: dict) -> list[dict]:
    """One record per (shape, measured kernel) with both times and measured / estimated."""
    rows, out = sass["shapes"], []
    for name, step in gpu["steps"].items():
        if not name.startswith("gemm "):
            continue
        n, k = step["N"], step["K"]
        any_row = next((r for r in rows if (r["N"], r["K"]) == (n, k)), None)
        for what, t in step["times"].items():
            if "ms" not in t:
                continue
            if what in PAIRS:
                e = estimate(rows, n, k, *PAIRS[what])
                if e is None:
                    continue
                est, tile = e
                label = f"{PAIRS[what][0]} {PAIRS[what][1]}"
            elif what in ("act_quant", "norm_quant") and any_row and any_row.get(f"{what}_us") is not None:
                est, tile, label = float(any_row[f"{what}_us"]), "best", what
            else:
                continue
            meas = 1e3 * t["ms"]
            out.append({"N": n, "K": k, "measured": what, "instrument": label, "tile": tile,
                        "est_us": round(est, 1), "measured_us": round(meas, 1), "ratio": round(meas / est, 2)})
    return out


def render(recs: list[dict], sass: dict, gpu: dict) -> str:
    env = gpu["steps"].get("environment", {})
    by = {}
    for r in recs:
        by.setdefault((r["measured"], r["tile"] if r["measured"] not in ("w4a8_auto", "w4a8_per_token") else "auto"),
                      []).append(r["ratio"])
    lines = [f"# Static instrument vs {env.get('device', 'GPU')}: estimated and measured times", "",
             f"Estimates: `bench/results/sass.json` ({sass['meta']['date']}, triton {sass['meta']['triton']}, H100 SXM "
             f"model). Measured: `bench/first_window.py` on {env.get('device')} ({gpu['date']}, torch "
             f"{env.get('torch')}, triton {env.get('triton')}), do_bench median, M = 32,760. ratio = measured / "
             "estimated (1 = the model is right; > 1 = it is optimistic). `bench/sass_vs_gpu.py`.", "",
             "## Model error by kernel and tile (median ratio over the shapes, range)", "",
             "| measured | instrument | tile | median ratio | range | shapes |", "|---|---|---|---|---|---|"]
    for (what, tile), v in sorted(by.items(), key=lambda kv: statistics.median(kv[1])):
        inst = next(r["instrument"] for r in recs if r["measured"] == what)
        lines.append(f"| {what} | {inst} | {tile} | {statistics.median(v):.2f} | {min(v):.2f}–{max(v):.2f} | "
                     f"{len(v)} |")
    lines += ["", "## Per shape", "", "| N x K | measured | instrument | tile | est µs | measured µs | ratio |",
              "|---|---|---|---|---|---|---|"]
    for r in recs:
        lines.append(f"| {r['N']}x{r['K']} | {r['measured']} | {r['instrument']} | {r['tile']} | {r['est_us']} | "
                     f"{r['measured_us']} | {r['ratio']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sass", default=str(ROOT / "bench" / "results" / "sass.json"))
    p.add_argument("--gpu", default=str(ROOT / "bench" / "results" / "first_window_h200.json"))
    p.add_argument("--stem", default=None, help="output stem (default sass_vs_<gpu file's suffix>, e.g. sass_vs_h200)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = p.parse_args(argv)
    sass, gpu = json.loads(Path(a.sass).read_text()), json.loads(Path(a.gpu).read_text())
    recs = compare(sass, gpu)
    if not recs:
        print("no measured kernel pairs with an estimate")
        return 1
    stem = a.stem or "sass_vs_" + Path(a.gpu).stem.split("_")[-1]
    out = Path(a.out)
    (out / f"{stem}.json").write_text(json.dumps({"sass_date": sass["meta"]["date"], "gpu_date": gpu["date"],
                                                  "records": recs}, indent=1) + "\n")
    (out / f"{stem}.md").write_text(render(recs, sass, gpu))
    print((out / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
