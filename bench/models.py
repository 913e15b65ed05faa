"""Every diffusers video transformer through ``backend="dvdquant"``: which linears are quantized under the default
``torch.compile`` and under ``fullgraph=True``, how many graphs Dynamo made, and the W8A8 output error.

    python bench/models.py                      # all models -> bench/results/models.{json,md}
    python bench/models.py --only WanTransformer3DModel MochiTransformer3DModel

Models: the tiny configs in ``tests/models/catalog`` (diffusers' tester configs widened so block linears have K a
multiple of 128; Gaussian N(0, 1/K) weights). Options: W8A8, MinMax weights, rotation, per-(token, 128)
activations, reference kernels, eager lowering (what is measured is which layers are quantized and that the output is
the quant reference's; speed is not measured here).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.models.catalog import SPECS  # noqa: E402
from tests.models.catalog.survey import OPTIONS, survey  # noqa: E402


def _row(name, s) -> dict:
    d, f = s.default, s.fullgraph
    return {
        "model": name, "linears": s.linears, "block_linears": len(s.block_linears),
        "default": {"ok": d.ok, "error": d.error, "graphs": d.graphs, **d.counts, "rel_err_w8a8": d.rel_err,
                    "rel_err_vs_reference": d.ref_err, "not_compiled": len(d.not_compiled), "warnings": d.warnings},
        "fullgraph": {"ok": f.ok, "error": f.error, "graphs": f.graphs, **f.counts, "rel_err_w8a8": f.rel_err},
        "same_set_as_fullgraph": (d.quantized == f.quantized) if d.ok and f.ok else None,
        "note": SPECS[name].note, "seconds": round(s.seconds, 1),
    }


def _md(res: dict) -> str:
    lines = [f"# diffusers video transformers through `backend=\"dvdquant\"` ({res['device']})", "",
             f"torch {res['torch']}, diffusers {res['diffusers']}, options {res['options']}. Tiny configs from "
             "`tests/models/catalog` (Gaussian weights). *graphs*: how many graphs Dynamo handed the backend under "
             "the default `torch.compile` (1 = no graph break). *quantized / weight-only / skipped*: the model's "
             "linears under the default compile (weight-only: 16-bit activations: modulation linears, short "
             "text sequences). *same as fullgraph*: the default compile quantizes exactly the layers "
             "`fullgraph=True` does. *W8A8 err*: relative L2 error of the output vs full precision. Not measured "
             "here: speed. *vs reference*: relative difference from the `dvdq_compile.quant` reference composed "
             "over the layers the report says were quantized (`tests/helpers.quantized_reference`).", "",
             "| model | linears | quantized / weight-only / skipped | graphs | fullgraph | same as fullgraph | "
             "W8A8 err | vs reference | notes |",
             "|---|---:|---|---:|---|---|---:|---:|---|"]
    for r in res["rows"]:
        d, f = r["default"], r["fullgraph"]
        if not d["ok"]:
            lines.append(f"| {r['model']} | {r['linears']} | error: {d['error']} | - | - | - | - | - | |")
            continue
        full = "ok" if f["ok"] else f"fails: {f['error'][:70]}"
        same = {True: "yes", False: "**no**", None: "(no fullgraph)"}[r["same_set_as_fullgraph"]]
        notes = []
        if d["not_compiled"]:
            notes.append(f"{d['not_compiled']} linears in no compiled graph (never called, or run eagerly)")
        notes += [f"warns: {w[w.find('kept in full precision'):][:150]}..." for w in d["warnings"]]
        lines.append(f"| {r['model']} | {r['linears']} | {d['quantize']} / {d['weight_only']} / {d['skip']} | "
                     f"{d['graphs']} | {full} | {same} | {d['rel_err_w8a8']:.4f} | {d['rel_err_vs_reference']:.1e} | "
                     f"{'; '.join(notes)} |")
    lines += ["", f"Run: `python bench/models.py` ({res['seconds']:.0f} s on this machine)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="class names (default: all)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output folder")
    ap.add_argument("--stem", default="models")
    args = ap.parse_args(argv)
    names = args.only or sorted(SPECS)
    unknown = sorted(set(names) - set(SPECS))
    if unknown:
        ap.error(f"unknown models {unknown}; known: {sorted(SPECS)}")
    import diffusers

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        s = survey(name, SPECS[name])
        rows.append(_row(name, s))
        print(f"{name}: default {s.default.counts or s.default.error}, graphs {s.default.graphs}, "
              f"fullgraph {'ok' if s.fullgraph.ok else s.fullgraph.error}", flush=True)
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.machine()}), 1 thread"
    res = {"device": dev, "torch": torch.__version__, "diffusers": diffusers.__version__, "options": OPTIONS,
           "rows": rows, "seconds": time.perf_counter() - t0}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{args.stem}.md").write_text(_md(res))
    print(f"wrote {out / (args.stem + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
