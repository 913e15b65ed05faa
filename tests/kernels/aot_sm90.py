"""Compile the dvdq kernels for Hopper (sm_90) without a GPU, and report ptxas resource usage.

The interpreter accepts dot shapes, layouts and intrinsics that real NVIDIA codegen rejects, so the interpreter tests
cannot catch those (docs/architecture.md §8). Triton can still compile to a cubin offline with the ptxas bundled in
its wheel, so this catches GPU-only compile errors (int8 dot K-block, wgmma layouts, libdevice.rint, div_rn, 3-D reshapes) on the
CPU machine. It cannot check numerics or speed.

Run in a process WITHOUT ``TRITON_INTERPRET`` (the kernels must be real ``JITFunction``\\ s)::

    env -u TRITON_INTERPRET python tests/kernels/aot_sm90.py [--all]

Prints one JSON line per specialization: name, ok, error, registers, stack (spill) bytes, shared memory, the
number of wgmma instructions in the PTX, and for a warp-specialized kernel the registers each partition names.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dvdq_compile.kernels import act_quant as A  # noqa: E402
from dvdq_compile.kernels import attn_quant as AT  # noqa: E402
from dvdq_compile.kernels import aot  # noqa: E402
from dvdq_compile.kernels import bgr as B  # noqa: E402
from dvdq_compile.kernels import expand as E  # noqa: E402
from dvdq_compile.kernels import fused as F  # noqa: E402
from dvdq_compile.kernels import gluon_ws as GWS  # noqa: E402
from dvdq_compile.kernels import gluon_qlinear as GQL  # noqa: E402
from dvdq_compile.kernels import norm_quant as NQ  # noqa: E402
from dvdq_compile.kernels import qlinear as Q  # noqa: E402
from dvdq_compile.kernels import sass_model as SM  # noqa: E402
from dvdq_compile.kernels import tl_common as T  # noqa: E402



def compile_one(name, autotuned, sig, const, num_warps, num_stages, maxnreg=None):
    rec = {"name": name, "warps": num_warps, "stages": num_stages, **{k: v for k, v in const.items()
                                                                       if k.startswith("BLOCK")}}
    try:
        k = aot.compile_sm90(autotuned, sig, const, num_warps, num_stages, maxnreg=maxnreg)
    except Exception as e:  # report, do not stop
        rec.update(ok=False, error=f"{type(e).__name__}: {str(e)[:400]}")
        return rec
    rec.update(ok=True, wgmma=k.asm["ptx"].count("wgmma.mma_async"))
    if aot.CUOBJDUMP.exists():
        rec.update(aot.resources(k))
        # wgmma waits ptxas kept at depth >= 1 (it rewrites them all to 0 when it serializes the wgmmas)
        rec["async_waits"] = sum(int(d, 16) > 0 for d in re.findall(r"WARPGROUP\.DEPBAR\.LE gsb0, 0x([0-9a-f]+)",
                                                                    aot.sass(k)))
        if maxnreg:   # warp-specialized: the registers each partition's code names (setmaxnreg gives its budget)
            instrs = SM.parse(aot.sass(k))
            _, tiles, loader = SM.pingpong_ranges(instrs)
            rec["consumer_regs"] = SM.registers_named(instrs[tiles[0]:tiles[1] + 1])
            rec["loader_regs"] = SM.registers_named(instrs[loader[0]:loader[1] + 1])
    return rec


def act_specs():
    base = {"M": "i32", "K": "i32", "M_BUCKET": "i32", "stride_xm": "i32", "stride_cm": "i32", "stride_sm": "i32",
            "c_ptr": "*i8", "s_ptr": "*fp32", "clip_ptr": "*fp32"}
    for xdt, group, t, rot, mode, pt, clip in (("bf16", 128, 256, 128, T.ROT_PM1, False, False),
                                               ("bf16", 128, 256, 128, T.ROT_PM1, False, True),
                                               ("fp16", 64, 256, 128, T.ROT_PM1, False, False),
                                               ("bf16", 1, 128, 128, T.ROT_PM1, True, False),
                                               ("fp32", 64, 64, 64, T.ROT_FP32, False, False),
                                               ("fp32", 1, 128, 0, T.ROT_FP32, True, True)):
        sig = dict(base, x_ptr=f"*{xdt}", h_ptr="*fp32" if mode == T.ROT_FP32 else f"*{xdt}")
        const = dict(QMAX=127, GROUP=group, T=t, ROT=rot, ROT_MODE=mode, ROT_SCALE=1 / rot**0.5 if rot else 1.0,
                     PER_TOKEN=pt, USE_RINT=True, HAS_CLIP=clip, BLOCK_M=64)
        yield f"act_quant {xdt} g{group} T{t} r{rot} pt={pt} clip={clip}", A._act_quant_kernel, sig, const, 4, 2


def qlinear_specs(all_configs):
    sig = {"a_ptr": "*i8", "s_ptr": "*fp32", "w_ptr": "*u8", "ws_ptr": "*fp32", "wz_ptr": "*i32",
           "bias_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32", "M_BUCKET": "i32",
           "stride_am": "i32", "stride_sm": "i32", "stride_wn": "i32", "stride_cm": "i32"}
    cfgs = Q._gpu_configs() if all_configs else Q._gpu_configs()[:1]
    for gk, bk, pt, part, pack in ((128, 128, False, False, 2), (3072, 128, True, False, 2),
                                   (256, 128, False, True, 2), (32, 32, False, False, 2), (128, 128, False, False, 1),
                                   (3072, 128, True, False, 1)):
        for c in cfgs:
            s = dict(sig, c_ptr="*i32" if part else "*bf16")
            const = dict(GROUP_K=gk, BLOCK_K=bk, PER_TOKEN=pt, PACK=pack, HAS_BIAS=not part, PARTIALS=part,
                         EXPANDED=False, **c.kwargs)
            w = "" if pack == 2 else " w8"
            yield f"qlinear g{gk} bk{bk} pt={pt} partials={part}{w}", Q._qlinear_kernel, s, const, c.num_warps, \
                c.num_stages
            if pack == 2:  # the int8-native loop on expanded weights (kernels/expand.py)
                yield (f"qlinear g{gk} bk{bk} pt={pt} partials={part} expanded", Q._qlinear_kernel,
                       dict(s, w_ptr="*i8"), dict(const, PACK=1, EXPANDED=True), c.num_warps, c.num_stages)


def fused_specs(all_configs):
    cfgs = F._gpu_configs() if all_configs else F._gpu_configs()[:1]
    for xdt, gk, pt, rot, mode, pack in (("bf16", 128, False, 128, T.ROT_PM1, 2),
                                         ("bf16", 128, True, 128, T.ROT_PM1, 2),
                                         ("fp32", 64, False, 64, T.ROT_FP32, 2),
                                         ("bf16", 128, False, 128, T.ROT_PM1, 1)):
        sig = {"x_ptr": f"*{xdt}", "h_ptr": "*fp32" if mode == T.ROT_FP32 else f"*{xdt}", "w_ptr": "*u8",
               "ws_ptr": "*fp32", "wz_ptr": "*i32", "bias_ptr": f"*{xdt}", "c_ptr": f"*{xdt}", "M": "i32",
               "N": "i32", "K": "i32", "M_BUCKET": "i32", "stride_xm": "i32", "stride_wn": "i32", "stride_cm": "i32"}
        for c in cfgs:
            const = dict(QMAX=7 if pack == 2 else 127, GROUP_K=gk, PER_TOKEN=pt, PACK=pack, ROT=rot, ROT_MODE=mode,
                         ROT_SCALE=1 / rot**0.5 if rot else 1.0, USE_RINT=True, HAS_BIAS=True, **c.kwargs)
            w = "" if pack == 2 else " w8"
            yield f"fused {xdt} g{gk} pt={pt} r{rot}{w}", F._fused_qlinear_kernel, sig, const, c.num_warps, \
                c.num_stages


def bgr_specs():
    sig = {"w_ptr": "*fp32", "d_ptr": "*fp32", "z_ptr": "*fp32", "L": "i32", "stride_r": "i32", "N_CAND": "i32",
           "N_STEPS": "i32", "MAX_ITER": "i32", "rel_eps": "fp32"}
    for qmax, block, warps in ((15, 2048, 2), (15, 16384, 16), (255, 8192, 8), (7, 128, 1)):
        const = dict(QMAX=qmax, TINY=1e-12, BLOCK=block, USE_RINT=True)
        yield f"bgr qmax{qmax} L<={block}", B._bgr_kernel, sig, const, warps, 1


def norm_specs():
    sig = {"x_ptr": "*bf16", "mult_ptr": "*fp32", "shift_ptr": "*fp32", "h_ptr": "*bf16", "c_ptr": "*i8",
           "s_ptr": "*fp32", "M": "i32", "K": "i32", "S": "i32", "eps": "fp32", "stride_xm": "i32",
           "stride_mb": "i32", "stride_ms": "i32", "stride_sb": "i32", "stride_ss": "i32", "stride_cm": "i32",
           "stride_sm": "i32"}
    for c in NQ._CONFIGS:
        const = {"QMAX": 127, "GROUP": 128, "T": 256, "ROT": 128, "ROT_MODE": T.ROT_PM1, "ROT_SCALE": 128 ** -0.5,
                 "OUT": 2, "USE_RINT": True, **c.kwargs}
        yield "norm_quant bf16 g128 r128", NQ._norm_quant_kernel, sig, const, c.num_warps, c.num_stages


def attn_specs():
    """The attention kernel that quantizes in its epilogue, bf16 D = 128, at each GPU tile."""
    for c in AT._gpu_configs():
        sig, const = AT.offline_spec(c)
        yield f"attn_quant bf16 d128 {c.kwargs['BLOCK_M']}x{c.kwargs['BLOCK_N']}", AT._attn_quant_kernel, sig, const, \
            c.num_warps, c.num_stages


def gluon_specs():
    """The Gluon W4A8 kernel at every tile its dispatch uses (kernels/gluon_qlinear.py), and the warp-specialized
    W4A8 GEMM in every mode it runs (the FFN-up's GELU epilogue in ping-pong and cooperatively, a bf16 output
    cooperatively) at every groups-per-iteration count, and its wide 128x192 tile (kernels/gluon_ws.py)."""
    for tile in GQL.TILES:
        sig, const = GQL.offline_spec(tile)
        name = f"gluon_qlinear {f'per-token {tile[0]}x{tile[1]}' if tile[4] == 1 else f'g128 u{tile[4]}'}"
        yield name, GQL._gluon_qlinear_kernel, sig, const, tile[2], tile[3]
    for gelu, coop in GWS.MODES:
        for u in GWS.UNROLLS:
            sig, const = GWS.offline_spec(u, gelu, coop)
            mode = f"{'gelu' if gelu else 'bf16'} {'coop' if coop else 'pp'}"
            yield f"gluon_ws {mode} {'per-token' if u == 1 else f'g128 u{u}'}", GWS._ws_kernel, sig, const, \
                GWS.CONSUMER_WARPS, const["STAGES"], GWS.LAUNCH_REGS
    sig, const = GWS.offline_spec(1, False, True, wide=True)   # the dispatch's group-128 tile, 128 x 192
    yield "gluon_ws bf16 coop wide g128", GWS._ws_kernel, sig, const, GWS.CONSUMER_WARPS, const["STAGES"], \
        GWS.LAUNCH_REGS


def expand_specs():
    sig = {"p_ptr": "*u8", "z_ptr": "*i32", "out_ptr": "*i8", "N": "i32", "KH": "i32", "stride_pn": "i32",
           "stride_on": "i32"}
    yield "expand w4", E._expand_kernel, sig, dict(BLOCK_N=32, BLOCK_KH=64), 4, 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    all_configs = "--all" in argv
    assert not T.INTERPRET and T.USE_RINT, "run without TRITON_INTERPRET"
    ok = True
    for spec in (*act_specs(), *qlinear_specs(all_configs), *fused_specs(all_configs), *bgr_specs(),
                 *expand_specs(), *norm_specs(), *gluon_specs(), *attn_specs()):
        rec = compile_one(*spec)
        ok &= rec["ok"]
        print(json.dumps(rec), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
