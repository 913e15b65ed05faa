"""Static performance instrument: compile every kernel variant for sm_90 on the CPU machine and read its SASS.

No GPU needed (Triton's bundled ptxas / cuobjdump, ``dvdq_compile.kernels.aot``). For each kernel variant and
tile config it reports, per iteration of the hot loop (the GEMM's K loop; the whole kernel for act_quant):
instruction counts by class (MMA, unpack, convert, float, address, memory, sync), the wgmma wait depth, registers,
spills, shared memory, occupancy, and the MMA / shared-memory / issue / serialization bounds of
``dvdq_compile.kernels.sass_model`` with the estimated fraction of int8 peak. Then, per Wan linear shape at
M = 32760 tokens (Wan 2.1 480p, 81 frames), the estimated time of each GEMM variant (tile waves on 132 SMs) against
its HBM bytes floor and an ideal int8 GEMM, and what a separate activation-quantization pass adds.

It is a model, not a measurement (``sass_model``'s docstring says what it leaves out); the GPU numbers come from
``bench/kernels.py``. Results: ``bench/results/sass.{json,md}``; ``tests/bench/test_sass.py`` fails when a
variant's estimate falls below the committed one.

    env -u TRITON_INTERPRET python bench/sass.py [--out bench/results] [--only qlinear] [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)   # real JITFunctions (before triton is imported)
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import triton  # noqa: E402

from dvdq_compile.kernels import act_quant as A  # noqa: E402
from dvdq_compile.kernels import attn_quant as AQ  # noqa: E402
from dvdq_compile.kernels import aot  # noqa: E402
from dvdq_compile.kernels import cost  # noqa: E402
from dvdq_compile.kernels import fused as F  # noqa: E402
from dvdq_compile.kernels import gelu_quant as GQ  # noqa: E402
from dvdq_compile.kernels import gluon_ws as GWS  # noqa: E402
from dvdq_compile.kernels import gluon_qlinear as GQL  # noqa: E402
from dvdq_compile.kernels import norm_quant as NQ  # noqa: E402
from dvdq_compile.kernels import qlinear as Q  # noqa: E402
from dvdq_compile.kernels import sass_model as SM  # noqa: E402
from dvdq_compile.kernels import tl_common as T  # noqa: E402

M_TOKENS = 32760
WAN_SHAPES = ((1536, 1536), (8960, 1536), (1536, 8960), (5120, 5120), (13824, 5120), (5120, 13824))
CLASS_ORDER = ("mma", "unpack", "convert", "float", "address", "memory", "sync", "uniform", "control")

QLINEAR_SIG = {"a_ptr": "*i8", "s_ptr": "*fp32", "w_ptr": "*u8", "ws_ptr": "*fp32", "wz_ptr": "*i32",
               "bias_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32",
               "stride_am": "i32", "stride_sm": "i32", "stride_wn": "i32", "stride_cm": "i32"}
FUSED_SIG = {"x_ptr": "*bf16", "h_ptr": "*bf16", "w_ptr": "*u8", "ws_ptr": "*fp32", "wz_ptr": "*i32",
             "bias_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32",
             "stride_xm": "i32", "stride_wn": "i32", "stride_cm": "i32"}
NORM_SIG = {"x_ptr": "*bf16", "mult_ptr": "*fp32", "shift_ptr": "*fp32", "h_ptr": "*bf16", "c_ptr": "*i8",
            "s_ptr": "*fp32", "M": "i32", "K": "i32", "S": "i32", "eps": "fp32", "stride_xm": "i32",
            "stride_mb": "i32", "stride_ms": "i32", "stride_sb": "i32", "stride_ss": "i32", "stride_cm": "i32",
            "stride_sm": "i32"}
GELU_SIG = {"a_ptr": "*i8", "s_ptr": "*fp32", "w_ptr": "*i8", "ws_ptr": "*fp32", "wz_ptr": "*i32", "bias_ptr": "*bf16",
            "h_ptr": "*bf16", "c_ptr": "*i8", "cs_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
            "M_BUCKET": "i32", "stride_am": "i32", "stride_sm": "i32", "stride_wn": "i32", "stride_cm": "i32",
            "stride_csm": "i32"}
ATTN_VARIANT = "flash fwd bf16 d128 + A8 g128 r128 epilogue"
# (FFN-up (N, K), its FFN-down (N, K)) on Wan 1.3B / 14B: the FFN-up GEMM's epilogue writes the FFN-down's codes
FFN_PAIRS = (((8960, 1536), (1536, 8960)), ((13824, 5120), (5120, 13824)))
GELU_VARIANT = "W4→int8 g128 +GELU→A8 g128 r128"
ACT_SIG = {"x_ptr": "*bf16", "h_ptr": "*bf16", "c_ptr": "*i8", "s_ptr": "*fp32", "clip_ptr": "*fp32", "M": "i32",
           "K": "i32", "M_BUCKET": "i32", "stride_xm": "i32", "stride_cm": "i32", "stride_sm": "i32"}


@dataclass
class Spec:
    """One compiled variant. ``k_iter``: K consumed per hot-loop iteration (GEMMs); ``elems``: elements per CTA
    (act_quant); ``wbytes``: stored bytes per weight the variant reads; ``per_k``: a per-token variant's K (its
    GROUP_K constexpr), None for grouped ones."""
    kernel: str
    variant: str
    fn: object
    sig: dict
    const: dict
    warps: int
    stages: int
    k_iter: int = 0
    elems: int = 0
    wbytes: float = 0.5
    group: int = 128
    block: tuple | None = None    # (BLOCK_M, BLOCK_N) where they are not constexprs (Gluon: the TMA boxes)
    maxnreg: int | None = None    # the launch's register cap (warp-specialized: setmaxnreg splits it)

    @property
    def bm(self) -> int:
        return self.block[0] if self.block else self.const["BLOCK_M"]

    @property
    def bn(self) -> int:
        return self.block[1] if self.block else self.const["BLOCK_N"]

    @property
    def tile(self) -> str:
        c = self.const
        if self.block or "BLOCK_N" in c:
            unroll = f"/u{c['UNROLL']}" if c.get("UNROLL", 1) > 1 else ""   # groups per loop iteration
            # warp-specialized: two consumer warpgroups of `warps` warps (ping-pong or cooperative) and a loader warp
            warps = f"{'coop' if c['COOP'] else 'pp'} 2x{self.warps}w+1w" if self.kernel == "gluon_ws" else \
                f"{self.warps}w"
            return f"{self.bm}x{self.bn}/{warps}/{self.stages}s{unroll}"
        return f"{c['BLOCK_M']}x{c.get('T', '')}/{self.warps}w"


def _cfg(c):
    return c.kwargs, c.num_warps, c.num_stages


def gemm_specs(quick: bool) -> list[Spec]:
    out = []
    cfgs = Q._gpu_configs()[:1] if quick else Q._gpu_configs()
    for c in cfgs:
        kw, w, st = _cfg(c)
        base = dict(BLOCK_K=128, HAS_BIAS=True, PARTIALS=False, EXPANDED=False, **kw)
        i8 = dict(base, PACK=1, EXPANDED=True)
        sig8 = dict(QLINEAR_SIG, w_ptr="*i8")
        out.append(Spec("qlinear", "W4 g128", Q._qlinear_kernel, QLINEAR_SIG,
                        dict(base, GROUP_K=128, PER_TOKEN=False, PACK=2), w, st, k_iter=128))
        out.append(Spec("qlinear", "W4 per-token", Q._qlinear_kernel, QLINEAR_SIG,
                        dict(base, GROUP_K=1536, PER_TOKEN=True, PACK=2), w, st, k_iter=128, group=0))
        out.append(Spec("qlinear", "W4→int8 g128", Q._qlinear_kernel, sig8,
                        dict(i8, GROUP_K=128, PER_TOKEN=False), w, st, k_iter=128, wbytes=1.0))
        out.append(Spec("qlinear", "W4→int8 per-token", Q._qlinear_kernel, sig8,
                        dict(i8, GROUP_K=1536, PER_TOKEN=True), w, st, k_iter=128, wbytes=1.0, group=0))
        if not quick:
            out.append(Spec("qlinear", "W8 g128", Q._qlinear_kernel, QLINEAR_SIG,
                            dict(base, GROUP_K=128, PER_TOKEN=False, PACK=1), w, st, k_iter=128, wbytes=1.0))
    for c in GQ._gpu_configs()[:1] if quick else GQ._gpu_configs():
        kw, w, st = _cfg(c)
        const = dict(BLOCK_K=128, HAS_BIAS=True, EXPANDED=True, PACK=1, GROUP_K=128, PER_TOKEN=False, OUT=2, APPROX=1,
                     QMAX=127, GROUP=128, ROT=128, ROT_MODE=T.ROT_PM1, ROT_SCALE=128 ** -0.5, USE_RINT=True, **kw)
        out.append(Spec("gelu_quant", GELU_VARIANT, GQ._gelu_quant_kernel, GELU_SIG, const, w, st, k_iter=128,
                        wbytes=1.0))
    fcfgs = F._gpu_configs()[:1] if quick else F._gpu_configs()
    for c in fcfgs:
        kw, w, st = _cfg(c)
        const = dict(QMAX=127, GROUP_K=128, PER_TOKEN=False, PACK=2, ROT=128, ROT_MODE=T.ROT_PM1,
                     ROT_SCALE=128 ** -0.5, USE_RINT=True, HAS_BIAS=True, **kw)
        out.append(Spec("fused", "W4A8 g128 r128", F._fused_qlinear_kernel, FUSED_SIG, const, w, st, k_iter=128))
    for tile in GQL.TILES[:2] if quick else GQL.TILES:
        bm, bn, w, st, u = tile
        sig, const = GQL.offline_spec(tile)
        variant = "W4→int8 per-token" if u == 1 else "W4→int8 g128"
        out.append(Spec("gluon_qlinear", variant, GQL._gluon_qlinear_kernel, sig, const, w, st, k_iter=128 * u,
                        wbytes=1.0, group=0 if u == 1 else 128, block=(bm, bn)))
    for gelu, coop in () if quick else GWS.MODES:   # warp-specialized: the GEMM, and the FFN-up with its epilogue
        for u in GWS.UNROLLS:
            sig, const = GWS.offline_spec(u, gelu, coop)
            variant = ("W4→int8 per-token" if u == 1 else "W4→int8 g128") + (" +GELU→A8 g128 r128" if gelu else "")
            out.append(Spec("gluon_ws", variant, GWS._ws_kernel, sig, const, GWS.CONSUMER_WARPS, const["STAGES"],
                            k_iter=128 * u, wbytes=1.0, group=0 if u == 1 else 128,
                            block=(GWS.BLOCK_M * (2 if coop else 1), GWS.BLOCK_N), maxnreg=GWS.LAUNCH_REGS))
    if not quick:   # the wide cooperative tile: 128 x 192, one partial per consumer part (group-128, bf16 output)
        sig, const = GWS.offline_spec(1, False, True, wide=True)
        out.append(Spec("gluon_ws", "W4→int8 g128", GWS._ws_kernel, sig, const, GWS.CONSUMER_WARPS, const["STAGES"],
                        k_iter=128, wbytes=1.0, group=128, block=(2 * GWS.BLOCK_M, GWS.BLOCK_N + GWS.BLOCK_N2),
                        maxnreg=GWS.LAUNCH_REGS))
    return out


def pingpong_ref_k(unroll: int) -> int:
    """The K at which the per-kernel table shows a warp-specialized variant's per-tile estimate: the Wan FFN-up K
    whose groups its unroll count divides (1536: Wan 1.3B; 5120: 14B)."""
    return 1536 if 12 % unroll == 0 else 5120


def pingpong_tile(rec: dict, k: int) -> dict:
    """A warp-specialized record's bounds per consumer tile (64 x 128, or 64 x 192 wide) at ``k``
    (``sass_model.pingpong_cycles``): its K-loop iterations from the MACs (a K step the compiler peeled out of the
    loop counts in the epilogue's)."""
    loop, epi, loader = (SM.LoopStats(**rec["pingpong"][p]) for p in ("loop", "epilogue", "loader"))
    total = GWS.BLOCK_M * rec.get("block_n", GWS.BLOCK_N) * k
    iters = (total - epi.macs.get("int8", 0)) / loop.macs["int8"]
    return SM.pingpong_cycles(loop, iters, epi, loader, k // 128, total, rec["coop"])


def act_specs() -> list[Spec]:
    out = []
    for bm, w in ((64, 4), (128, 8)):
        const = dict(QMAX=127, GROUP=128, T=256, ROT=128, ROT_MODE=T.ROT_PM1, ROT_SCALE=128 ** -0.5,
                     PER_TOKEN=False, USE_RINT=True, HAS_CLIP=False, BLOCK_M=bm)
        out.append(Spec("act_quant", "A8 g128 r128 bf16", A._act_quant_kernel, ACT_SIG, const, w, 2,
                        elems=bm * 256))
    for c in NQ._CONFIGS:
        bm, w = c.kwargs["BLOCK_M"], c.num_warps
        const = {"QMAX": 127, "GROUP": 128, "T": 256, "ROT": 128, "ROT_MODE": T.ROT_PM1, "ROT_SCALE": 128 ** -0.5,
                 "OUT": 2, "USE_RINT": True, "BLOCK_M": bm}
        # elems: one chunk of the normalize-quantize loop (the hot loop); the statistics loop is added per shape
        out.append(Spec("norm_quant", "LN+mod+A8 g128 r128 bf16", NQ._norm_quant_kernel, NORM_SIG, const, w,
                        c.num_stages, elems=bm * 256))
    for c in AQ._gpu_configs():   # fuse_attn's kernel: one KV block per loop iteration
        bm, bn = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        sig, const = AQ.offline_spec(c)
        out.append(Spec("attn_quant", ATTN_VARIANT, AQ._attn_quant_kernel, sig, const, c.num_warps, c.num_stages,
                        elems=bm * bn, block=(bm, bn)))
    return out


# ---------------------------------------------------------------------------------------------------------------

def analyse(spec: Spec) -> dict:
    t0 = time.perf_counter()
    rec = {"kernel": spec.kernel, "variant": spec.variant, "tile": spec.tile, "warps": spec.warps,
           "stages": spec.stages}
    try:
        k = aot.compile_sm90(spec.fn, spec.sig, spec.const, spec.warps, spec.stages, maxnreg=spec.maxnreg)
    except Exception as e:  # a variant that does not compile is a row, not a crash
        rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
        return rec
    res = aot.resources(k)
    instrs = SM.parse(aot.sass(k))
    st = SM.loop_stats(instrs)
    ctas = SM.occupancy(res.get("regs", 255), res["shared"], spec.warps)
    rec.update(ok=True, compile_s=round(time.perf_counter() - t0, 2), **res, ctas_per_sm=ctas,
               loop=st.loop, loop_instructions=st.instructions, total_instructions=len(instrs),
               by_class={c: st.by_class.get(c, 0) for c in CLASS_ORDER if st.by_class.get(c, 0)},
               pipe_cycles=st.pipe_cycles, wait_depth=st.wait_depth, gmma=sorted(set(map(tuple, st.gmma))),
               macs=st.macs, smem_bytes=st.smem_bytes, local_mem=st.local_mem)
    if spec.kernel == "gluon_qlinear":   # persistent: its tile loop holds the K loop
        hot = SM.hot_loop(instrs)
        outer = SM.enclosing_loop(instrs, hot) if hot else None
        if outer:
            last_exit = max(i for i, ins in enumerate(instrs) if ins.base == "EXIT")
            rec.update(tile_loop_instructions=outer[1] - outer[0] + 1, kernel_instructions=last_exit + 1)
    if spec.kernel == "gluon_ws":   # warp-specialized: per consumer tile, at the reference K
        parts = SM.pingpong_parts(instrs)
        rec.update(pingpong={p: asdict(st) for p, st in zip(("loop", "epilogue", "loader"), parts)},
                   coop=spec.const["COOP"], k_ref=pingpong_ref_k(spec.const["UNROLL"]), k_iter=spec.k_iter,
                   ctas_per_sm=1, block_n=spec.bn)
        rec.update(pingpong_tile(rec, rec["k_ref"]))
        return rec
    if spec.k_iter:
        if spec.kernel == "gluon_qlinear":   # K per loop iteration from its wgmmas (ptxas may unroll the loop)
            spec.k_iter = st.macs.get("int8", 0) * max(spec.warps // 4, 1) // (spec.bm * spec.bn) or spec.k_iter
        useful = spec.bm * spec.bn * spec.k_iter
        rec.update(k_iter=spec.k_iter, **SM.tile_cycles(st, spec.warps, ctas, useful))
    elif spec.kernel == "attn_quant":   # QKᵀ and PV per KV block: its share of the 16-bit tensor peak
        rec.update(elems=spec.elems, **SM.tile_cycles(st, spec.warps, ctas))
        rec["bf16_useful"] = 2 * spec.bm * spec.bn * spec.const["D"] / SM.MAC_PER_CLK["fp16"]
        rec["bf16_fraction"] = rec["bf16_useful"] / rec["cycles"]
    else:
        rec.update(elems=spec.elems, **SM.tile_cycles(st, spec.warps, ctas))
        rec["instructions_per_element"] = round(st.instructions * 32 * spec.warps / spec.elems, 2)
        hot = SM.hot_loop(instrs)
        others = [b - a + 1 for a, b in SM.loops(instrs) if (a, b) != hot and not (hot[0] <= a and b <= hot[1])] \
            if hot else []
        # a row kernel with a statistics pass (norm_quant): that loop's instructions per chunk, issued as often
        rec["other_loop_instructions"] = sum(others)
    return rec


def remodel(rec: dict) -> dict:
    """A compiled record's bounds re-combined by the current model (``sass_model.serial_cycles``): its MMA, shared-
    memory and issue cycles are properties of the SASS; how they combine is the model's."""
    if not rec.get("ok"):
        return rec
    if "pingpong" in rec:
        return {**rec, **pingpong_tile(rec, rec["k_ref"])}
    useful = rec["fraction"] * rec["cycles"]   # the int8 tensor clocks of the useful MACs (tile_cycles' numerator)
    out = {**rec, **SM.combine(rec["mma_cycles"], rec["smem_cycles"], rec["issue_cycles"], "serial_cycles" in rec,
                               rec["ctas_per_sm"], useful, rec.get("exposed_cycles"))}
    if "bf16_useful" in rec:
        out["bf16_fraction"] = rec["bf16_useful"] / out["cycles"]
    return out


def gemm_bytes(m, n, k, group, wbytes):
    """HBM bytes of one W4A8 GEMM: int8 codes, fp32 scales, stored weights, bf16 output (cost.qlinear_cost)."""
    g = k if not group else group
    return m * k + 4 * m * k / g + n * k * wbytes + 8 * n + 2 * n + 2 * m * n


def act_bytes(m, k, group=128):
    """HBM bytes of a separate rotate+quantize pass: bf16 in, int8 codes and fp32 scales out."""
    return 2 * m * k + m * k + 4 * m * k / group


def _row_tiles_seconds(m, k, block_m, t, ctas, cycles_per_tile) -> float:
    """An activation kernel over [M, K] in [block_m, t] tiles: the GEMM wave model with one iteration per tile."""
    return cost.evaluate(cost.gemm_cycles(m, k, 1, cycles_per_iter=cycles_per_tile, block_m=block_m, block_n=t,
                                          k_iter=1, ctas_per_sm=ctas, sms=SM.SMS)) / SM.CLOCK_HZ


def shape_rows(recs: list[dict], specs: list[Spec], hbm: float) -> list[dict]:
    """Per Wan shape: each GEMM variant's estimated time and fraction of int8 peak; the act_quant pass."""
    by_name = {(s.kernel, s.variant, s.tile): s for s in specs}
    act = [r for r in recs if r.get("ok") and r["kernel"] == "act_quant"]
    nq = [r for r in recs if r.get("ok") and r["kernel"] == "norm_quant"]
    rows = []
    m = M_TOKENS
    for n, k in WAN_SHAPES:
        ideal = m * n * k / (SM.SMS * SM.MAC_PER_CLK["int8"] * SM.CLOCK_HZ)
        best_act = None
        for r in act:
            s = by_name[(r["kernel"], r["variant"], r["tile"])]
            bm, t = s.const["BLOCK_M"], s.const["T"]
            comp = _row_tiles_seconds(m, k, bm, t, r["ctas_per_sm"], r["cycles"])
            mem = act_bytes(m, k) / hbm
            est = max(comp, mem)
            if best_act is None or est < best_act[0]:
                best_act = (est, comp, mem, r["tile"])
        best_nq = None
        for r in nq:   # norm → modulate → quantize in one kernel: both passes issue-costed, HBM floor e·MK + codes
            s = by_name[(r["kernel"], r["variant"], r["tile"])]
            bm, t = s.const["BLOCK_M"], s.const["T"]
            scale = (r["loop_instructions"] + r["other_loop_instructions"]) / r["loop_instructions"]
            comp = _row_tiles_seconds(m, k, bm, t, r["ctas_per_sm"], r["cycles"] * scale)
            est = max(comp, act_bytes(m, k) / hbm)
            if best_nq is None or est < best_nq:
                best_nq = est
        norm_floor = 4 * m * k / hbm     # the unfused norm: bf16 x in, bf16 y out
        for r in recs:
            if not r.get("ok") or "k_iter" not in r:
                continue
            s = by_name[(r["kernel"], r["variant"], r["tile"])]
            bm, bn = s.bm, s.bn
            epi = r["kernel"] == "gelu_quant" or "+GELU" in r["variant"]
            if epi and (n, k) not in [up for up, _ in FFN_PAIRS]:
                continue   # the epilogue kernels run the FFN-up GEMMs only
            if r["kernel"].startswith("gluon") and s.group and not s.const.get("SPLIT") \
                    and s.const["UNROLL"] != GQL.unroll_for(k // 128):
                continue   # the groups per iteration the dispatch runs at this K (gluon_qlinear.unroll_for)
            if "pingpong" in r:   # per CTA tile from the three partitions' code (per-CTA set-up not counted)
                per_cta = pingpong_tile(r, k)["cycles"] * bm // GWS.BLOCK_M
                comp = cost.evaluate(cost.gemm_cycles(m, n, k, cycles_per_iter=per_cta, block_m=bm, block_n=bn,
                                                      k_iter=k, sms=SM.SMS)) / SM.CLOCK_HZ
            else:
                outside = (r["total_instructions"] - r["loop_instructions"]) * r["warps"] / SM.SMSP / r["ctas_per_sm"]
                if "tile_loop_instructions" in r:   # persistent: per tile its tile loop around the K loop, once per CTA
                    # the rest (up to the EXIT; the try-wait retry blocks after it run only while a load is late)
                    tiles = -(-m // bm) * -(-n // bn)
                    per_cta = tiles / min(tiles, SM.SMS * r["ctas_per_sm"])
                    outside = (r["tile_loop_instructions"] - r["loop_instructions"]
                               + (r["kernel_instructions"] - r["tile_loop_instructions"]) / per_cta) \
                        * r["warps"] / SM.SMSP / r["ctas_per_sm"]
                if epi:   # + the epilogue's Hadamard: a [BM·BN/r, r] @ [r, r] 16-bit MMA per tile
                    outside += bm * bn * s.const.get("ROT", 128) / SM.MAC_PER_CLK["fp16"]
                comp = cost.evaluate(cost.gemm_cycles(m, n, k, cycles_per_iter=r["cycles"], block_m=bm, block_n=bn,
                                                      k_iter=r["k_iter"], ctas_per_sm=r["ctas_per_sm"], sms=SM.SMS,
                                                      outside=outside)) / SM.CLOCK_HZ
            xbytes = act_bytes(m, k) if r["kernel"] == "fused" else 0  # fused reads bf16 x instead of codes
            by = gemm_bytes(m, n, k, s.group, s.wbytes) + (xbytes - m * k - 4 * m * k / 128 if xbytes else 0)
            if epi:   # writes codes + scales instead of the bf16 output
                by += m * n + 4 * m * n / 128 - 2 * m * n
            mem = by / hbm
            # what the tiles pull from L2 into shared memory (each tile reads its K strips of both operands), at
            # the rate L2 was measured to deliver (sass_model.L2_MEASURED, bench/results/l2_probe_h200.md)
            l2 = -(-m // bm) * -(-n // bn) * k * (bm * (2 if r["kernel"] == "fused" else 1) + bn * s.wbytes)
            l2_time = l2 / SM.L2_MEASURED
            est, free = max(comp, mem, l2_time), max(comp, mem)
            if "int8" in r["variant"]:   # the per-call expansion (kernels/expand.py), a separate memory-bound pass
                expand = (0.5 + 1.0) * n * k / hbm
                est, free = est + expand, free + expand
            row = {"N": n, "K": k, "M": m, "kernel": r["kernel"], "variant": r["variant"], "tile": r["tile"],
                   "est_us": round(est * 1e6, 1), "compute_us": round(comp * 1e6, 1), "hbm_us": round(mem * 1e6, 1),
                   "l2_us": round(l2_time * 1e6, 1), "ideal_us": round(ideal * 1e6, 1),
                   "fraction": round(ideal / est, 3), "fraction_without_l2": round(ideal / free, 3),
                   "bound": max((comp, "compute"), (mem, "HBM"), (l2_time, "L2"))[1],
                   "l2_tbs": round(l2 / est / 1e12, 1), "l2_tbs_without_l2": round(l2 / free / 1e12, 1)}
            if "int8" in r["variant"]:
                row["expand_us"] = round(expand * 1e6, 1)
            gemm = r["kernel"] in ("qlinear", "gluon_qlinear") and not epi
            if gemm and best_act:
                row["act_quant_us"] = round(best_act[0] * 1e6, 1)
                row["act_share"] = round(best_act[0] / est, 3)
                row["act_bytes_share"] = round(act_bytes(m, k) / by, 3)
            if gemm and n == k:
                # to_out (N = K = model dim): quantized in the attention kernel's epilogue (fuse_attn), it writes
                # codes and scales instead of the 16-bit attention output, and no separate pass reads it
                row["attn_fused_bytes_share"] = round((m * k + 4 * m * k / 128 - 2 * m * k) / by, 3)
            if gemm and best_nq is not None and k in (1536, 5120):
                # when the producer is a norm (q/k/v and FFN-up): the fused kernel replaces norm + act_quant; it
                # adds (1 + 4/g − 2)·M·K < 0 bytes, and this much time beyond the norm's own HBM floor
                row["norm_quant_us"] = round(best_nq * 1e6, 1)
                row["norm_fused_added_share"] = round(max(0.0, best_nq - norm_floor) / est, 3)
            rows.append(row)
    return _ffn_producer(rows, m)


def _ffn_producer(rows: list[dict], m: int) -> list[dict]:
    """On the FFN-down rows: what quantizing its input in the FFN-up GEMM's epilogue adds — the epilogue kernel's
    time beyond the plain FFN-up GEMM (same loop variant, best tiles; the Triton pair on the Triton rows, the
    warp-specialized Gluon FFN-up against the dispatch's plain Gluon GEMM on the Gluon rows) as a share of this GEMM,
    and its bytes: codes and scales written instead of the 16-bit output (and no separate pass reading it), negative."""
    best = {(r["N"], r["K"], r["kernel"], r["variant"]): r for r in best_per_variant(rows)}
    for up, down in FFN_PAIRS:
        gluon = (best.get((*up, "gluon_ws", GELU_VARIANT)), best.get((*up, "gluon_ws", "W4→int8 g128")))
        pairs = {"qlinear": (best.get((*up, "gelu_quant", GELU_VARIANT)), best.get((*up, "qlinear", "W4→int8 g128"))),
                 "gluon_qlinear": gluon, "gluon_ws": gluon}
        k = down[1]
        for r in rows:
            g, plain = pairs.get(r["kernel"], (None, None)) if (r["N"], r["K"]) == down else (None, None)
            if g is None or plain is None:
                continue
            by = gemm_bytes(m, r["N"], k, 128, 1.0)
            r["ffn_epilogue_kernel"] = g["kernel"]
            r["ffn_epilogue_us"] = g["est_us"]
            r["ffn_epilogue_added_share"] = round(max(0.0, g["est_us"] - plain["est_us"]) / r["est_us"], 3)
            r["ffn_epilogue_bytes_share"] = round((m * k + 4 * m * k / 128 - 2 * m * k) / by, 3)
    return rows


def best_per_variant(rows: list[dict]) -> list[dict]:
    """Per (shape, kernel, variant): the tile config with the lowest estimated time (what autotune would pick)."""
    best = {}
    for r in rows:
        key = (r["N"], r["K"], r["kernel"], r["variant"])
        if key not in best or r["est_us"] < best[key]["est_us"]:
            best[key] = r
    return list(best.values())


def write(out: Path, recs: list[dict], rows: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sass.json").write_text(json.dumps({"meta": meta, "kernels": recs, "shapes": rows}, indent=1) + "\n")
    lines = [f"# Static instrument: sm_90 SASS of the dvdq kernels ({meta['date']})", "",
             f"Compiled offline for {meta['target']} with triton {meta['triton']} (torch {meta['torch']}) on "
             f"{meta['host']}. **Nothing here was timed**: the numbers are the model of "
             "`dvdq_compile/kernels/sass_model.py` (H100 SXM5 constants) applied to the compiled code"
             + (f" (bounds re-combined by the current model on {meta['remodelled']}: no CTA overlap, as measured on "
                "an H200, `sass_vs_h200.md`)" if meta.get("remodelled") else "") + ".", "",
             "## Per kernel variant: one hot-loop iteration", "",
             "| kernel | variant | tile | regs | spill B | smem KiB | CTAs/SM | loop instr | "
             + " | ".join(CLASS_ORDER) + " | wgmma wait | mma | smem | issue | serial | bound | est. % int8 peak |",
             "|" + "---|" * (10 + len(CLASS_ORDER) + 6)]
    for r in recs:
        if not r.get("ok"):
            lines.append(f"| {r['kernel']} | {r['variant']} | {r['tile']} | compile failed: {r['error'][:80]} |")
            continue
        cls = " | ".join(str(r["by_class"].get(c, 0)) for c in CLASS_ORDER)
        ser = f"{r['serial_cycles']:.0f}" if "serial_cycles" in r else \
            f"{r['chain_cycles']:.0f} (chain)" if "chain_cycles" in r else "-"
        frac = f"{100 * r['fraction']:.0f}" if r.get("k_iter") else \
            f"({100 * r['bf16_fraction']:.0f}% of bf16 peak)" if "bf16_fraction" in r else \
            f"({r['instructions_per_element']} instr/elem)"
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['tile']} | {r.get('regs', '?')} | {r.get('stack', '?')}"
                     f" | {r['shared'] / 1024:.0f} | {r['ctas_per_sm']} | {r['loop_instructions']} | {cls} | "
                     f"{r['wait_depth'] if r['wait_depth'] is not None else '-'} | {r['mma_cycles']:.0f} | "
                     f"{r['smem_cycles']:.0f} | {r['issue_cycles']:.0f} | {ser} | {r['bound']} | {frac} |")
    lines += ["", "gluon_ws (warp-specialized, `kernels/gluon_ws.py`: a loader warp and two consumer warpgroups of "
              "64x128 rows each, taking alternate 64x128 tiles (pp, ping-pong) or sharing 128x128 ones (coop), or "
              "64x192 rows each of a 128x192 tile (wide: one partial per consumer, group-128 only)): the "
              "class counts are one consumer's K-loop iteration, the bounds are per consumer tile at the Wan K its "
              "unroll count divides (1536, or 5120 for u10): tensor (the K loop's and the epilogue's wgmmas), shared "
              "memory, issue (one consumer warp's K loop and epilogue plus the loader's steps per sub-partition), "
              "and in the serial column the chain (ping-pong: one consumer's K loop then its epilogue, halved; "
              "cooperative: both K loops side by side, then both epilogues), `sass_model.pingpong_cycles`."]
    lines += ["", "attn_quant (`fuse_attn`'s kernel): one KV block per loop iteration; in brackets the model's share of "
              "the 16-bit tensor peak for its two GEMMs (QKᵀ and PV), the softmax waiting on them (serial)."]
    lines += ["", f"## Per Wan shape at M = {M_TOKENS}: best tile per variant (H100 SXM HBM {meta['hbm'] / 1e12} TB/s)",
              "", "est = max(compute from tile waves, HBM bytes floor, L2 bytes at its measured rate); ideal = int8 peak MMA time; act_quant = the "
              "separate rotate+quantize pass (best tile), share of the GEMM's estimated time and bytes. norm_quant = "
              "layer norm → modulate → rotate → quantize in one kernel (`kernels/norm_quant.py`), where the "
              "linear's input comes from a norm (K = model dim: q/k/v, cross-attention q, FFN-up; not to_out, "
              "whose input is the attention output): it adds no bytes (codes replace the norm's 16-bit output) and "
              "the added time is its estimate beyond the unfused norm's HBM floor, as a share of the GEMM. FFN-up "
              "epilogue = the FFN-up GEMM whose epilogue applies GELU, rotates and quantizes (`kernels/gelu_quant.py`; "
              "its rows are at the FFN-up shapes): on the FFN-down rows (K = FFN hidden), its time beyond the plain "
              "FFN-up GEMM and its bytes (codes + scales instead of the bf16 output, no separate pass: negative) as "
              "shares of the FFN-down GEMM. to_out (the attention output, shapes 1536x1536 / 5120x5120): with "
              "`fuse_attn` the attention kernel quantizes in its epilogue (`kernels/attn_quant.py`), writing codes "
              "and scales instead of the 16-bit output (attention-fused added bytes, negative); without it, the "
              "separate act_quant pass (act/GEMM columns). L2 = the bytes the tiles read from L2 into shared memory "
              "(each tile its K strips of both operands) at the rate L2 delivered on the H200, "
              f"{SM.L2_MEASURED / 1e12} TB/s (`bench/l2_probe.py`, `l2_probe_h200.md`), one of the estimate's three "
              "bounds (bound = the one that binds); a 64-row or 64-column tile reads 1.5x the bytes per MAC of a "
              "128x128 one, 2x those of 128x256. '% without L2' = the estimate without that bound, and 'L2 TB/s "
              "needed' the rate its tiles would then read.", "",
              "| N | K | kernel | variant | tile | est µs | compute µs | HBM µs | L2 µs | bound | ideal µs | "
              "est. % int8 peak | % without L2 | L2 TB/s needed | expand µs | act_quant µs | act/GEMM time | act/GEMM bytes | norm_quant µs | norm-fused added time | "
              "FFN-up epilogue µs | epilogue-fused added time | epilogue-fused added bytes | attention-fused added "
              "bytes (to_out) |",
              "|" + "---|" * 24]
    for r in sorted(best_per_variant(rows), key=lambda r: (r["K"] * r["N"], r["N"], r["kernel"], r["variant"])):
        lines.append(f"| {r['N']} | {r['K']} | {r['kernel']} | {r['variant']} | {r['tile']} | {r['est_us']} | "
                     f"{r['compute_us']} | {r['hbm_us']} | {r.get('l2_us', '-')} | {r.get('bound', '-')} | "
                     f"{r['ideal_us']} | {100 * r['fraction']:.0f} | {100 * r.get('fraction_without_l2', 0):.0f} | "
                     f"{r.get('l2_tbs_without_l2', '-')} | "
                     f"{r.get('expand_us', '-')} | {r.get('act_quant_us', '-')} | {r.get('act_share', '-')} | "
                     f"{r.get('act_bytes_share', '-')} | {r.get('norm_quant_us', '-')} | "
                     f"{r.get('norm_fused_added_share', '-')} | {r.get('ffn_epilogue_us', '-')} | "
                     f"{r.get('ffn_epilogue_added_share', '-')} | {r.get('ffn_epilogue_bytes_share', '-')} | "
                     f"{r.get('attn_fused_bytes_share', '-')} |")
    lines += ["", "Model (`dvdq_compile/kernels/sass_model.py`): cycles per loop iteration = max(MMA, shared-memory "
              "reads of the wgmmas, issue slots per SM sub-partition with 2-clock INT / IMAD and 8-clock XU pipes, "
              "MMA + issue when every wgmma is waited to depth 0: co-resident CTAs hide none of it, as measured); "
              "latency, bank conflicts and TMA are not modelled, L2 only as a bandwidth ceiling per GEMM. GEMM time per shape: `cost.gemm_cycles` (tile waves on 132 SMs at 1830 MHz). "
              "Variants: `W4` = packed nibbles unpacked in the K loop (before); `W4→int8` = weights expanded once "
              "per call to int8 q − z (`kernels/expand.py`, its time added) and a pure int8 loop (after); `g128` = "
              "per-(token, 128) activation scales with the fp32 rescale per group; `per-token` = one scale per "
              "token (no rescale in the loop).", ""]
    (out / "sass.md").write_text("\n".join(lines))


# what tests/bench/test_sass.py recompiles and holds to the committed estimates: the loop before (packed), the
# two int8-native loops after, at the tiles the instrument ranks best, the Gluon kernels
CHECK = (("qlinear", "W4 g128", "128x128/8w/3s"), ("qlinear", "W4→int8 g128", "128x64/4w/4s"),
         ("qlinear", "W4→int8 per-token", "64x128/4w/4s"), ("qlinear", "W4→int8 g128", "128x128/8w/3s"),
         ("gluon_qlinear", "W4→int8 per-token", "256x128/8w/3s"),
         ("gluon_qlinear", "W4→int8 g128", "128x64/8w/8s/u10"),
         ("gluon_ws", GELU_VARIANT, "64x128/pp 2x4w+1w/7s/u12"),
         ("gluon_ws", "W4→int8 g128", "128x128/coop 2x4w+1w/6s/u12"),
         ("gluon_ws", "W4→int8 g128", "128x192/coop 2x4w+1w/4s"))


def check(committed: Path) -> int:
    """Recompile :data:`CHECK` and compare with the committed results: exit 1 if an estimate fell by more than one
    point, a kernel spills more, or a variant no longer compiles."""
    old = {(r["kernel"], r["variant"], r["tile"]): r for r in json.loads(committed.read_text())["kernels"]}
    bad = []
    for s in gemm_specs(False):
        key = (s.kernel, s.variant, s.tile)
        if key not in CHECK:
            continue
        r, o = analyse(s), old.get(key)
        line = {"variant": s.variant, "tile": s.tile, "fraction": r.get("fraction"),
                "committed": o and o.get("fraction"), "stack": r.get("stack"), "committed_stack": o and o.get("stack")}
        print(json.dumps(line), flush=True)
        if not r.get("ok") or o is None:
            bad.append(f"{key}: {'not in the committed results' if o is None else r.get('error')}")
        elif r["fraction"] < o["fraction"] - 0.01 or r.get("stack", 0) > o.get("stack", 0):
            bad.append(f"{key}: estimate {r['fraction']:.3f} (committed {o['fraction']:.3f}), spill "
                       f"{r.get('stack')} B (committed {o.get('stack')} B)")
    for b in bad:
        print("REGRESSION", b)
    return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--only", default=None, help="kernel name filter (qlinear, fused, act_quant)")
    p.add_argument("--quick", action="store_true", help="first tile config only")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--remodel", default=None, metavar="SASS_JSON",
                   help="re-apply the current sass_model to a results file's recorded bounds (no compile) and write")
    p.add_argument("--check", default=None, help="committed sass.json: recompile the CHECK variants, fail on a "
                                                 "regression")
    a = p.parse_args(argv)
    if not aot.available():
        print("triton wheel without ptxas/cuobjdump: nothing compiled")
        return 0
    if a.check:
        return check(Path(a.check))
    if a.remodel:
        doc = json.loads(Path(a.remodel).read_text())
        recs = [remodel(r) for r in doc["kernels"]]
        specs = gemm_specs(False) + act_specs()
        meta = dict(doc["meta"], remodelled=datetime.date.today().isoformat())
        write(Path(a.out), recs, shape_rows(recs, specs, meta["hbm"]), meta)
        return 0
    specs = gemm_specs(a.quick) + act_specs()
    if a.only:
        specs = [s for s in specs if s.kernel == a.only]
    recs = []
    for s in specs:
        r = analyse(s)
        recs.append(r)
        print(json.dumps({k: r.get(k) for k in ("kernel", "variant", "tile", "regs", "stack", "loop_instructions",
                                                 "wait_depth", "bound", "fraction", "error") if k in r}), flush=True)
    import torch
    meta = {"date": datetime.date.today().isoformat(), "target": "sm_90 (cuda 90)", "triton": triton.__version__,
            "torch": torch.__version__, "host": "CPU machine (no GPU; offline compile)",
            "hbm": SM.HBM["H100 SXM"], "m_tokens": M_TOKENS}
    rows = shape_rows(recs, specs, SM.HBM["H100 SXM"])
    if not a.no_write:
        write(Path(a.out), recs, rows, meta)
    return 0 if all(r.get("ok") for r in recs) else 1


if __name__ == "__main__":
    sys.exit(main())
