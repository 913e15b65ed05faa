"""The static instrument (bench/sass.py): the GEMM loops it measured keep their estimated fraction of int8 peak."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dvdq_compile.kernels import aot, sass_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results" / "sass.json"


@pytest.mark.skipif(not aot.available(), reason="triton wheel without the NVIDIA backend / ptxas")
def test_estimates_do_not_regress():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "sass.py"), "--check", str(RESULTS)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 9, p.stdout[-2000:] + p.stderr[-2000:]   # bench/sass.py CHECK
    assert p.returncode == 0, p.stdout[-3000:]


def test_committed_estimates_order_the_variants_as_measured():
    """The committed estimates rank the GEMM loops as the H200 did (bench/results/first_window_h200.md: int8-native
    1.7-1.8x faster than packed nibbles, per-token scales 12-27% faster than group-128) on every Wan shape. Their
    absolute level is 1.2-1.8x optimistic (bench/results/sass_vs_h200.md); the >= 70% of int8 peak goal is not
    reached by any estimate of the group-128 loop (43-51%)."""
    rows = json.loads(RESULTS.read_text())["shapes"]
    shapes = {(r["N"], r["K"]) for r in rows}
    assert len(shapes) == 6
    for nk in shapes:
        best = {}
        for r in rows:
            if (r["N"], r["K"]) == nk and r["kernel"] == "qlinear":
                best[r["variant"]] = max(best.get(r["variant"], 0), r["fraction"])
        assert best["W4 g128"] * 1.2 < best["W4→int8 g128"] < best["W4→int8 per-token"], (nk, best)
        assert best["W4→int8 g128"] < 0.70, (nk, best)   # the Triton loop cannot: its int32 wgmmas are synchronous


def l2_ceiling(bm, bn):
    """Share of int8 peak a bm x bn tile can reach when L2 delivers sass_model.L2_MEASURED: it reads bm + bn bytes
    per K per tile for bm·bn MACs, and the SMs do 132·4096 MACs per clock at 1.83 GHz."""
    peak = sass_model.SMS * sass_model.MAC_PER_CLK["int8"] * sass_model.CLOCK_HZ
    return sass_model.L2_MEASURED * bm * bn / (bm + bn) / peak


def test_committed_estimates_of_the_gluon_kernel():
    """The Gluon kernels (rescale under a wgmma, persistent: kernels/gluon_qlinear.py, and warp-specialized:
    kernels/gluon_ws.py) against the Triton loop on the same terms, per Wan shape. Without the L2 bound they reach
    >= 70% of int8 peak everywhere; with L2 at its measured rate (bench/results/l2_probe_h200.md) every Gluon GEMM is
    L2-bound at its tile's ceiling, and the issue's >= 70% holds for the dispatch's tiles: per-token 256x128 at ~80%,
    group-128 on the wide cooperative 128x192 tile at ~71-72% (one partial per consumer part: the registers allow no
    larger tile); the cooperative 128x128 tile stops at ~60%, the 128x64 one at ~40%."""
    rows = json.loads(RESULTS.read_text())["shapes"]
    for nk in {(r["N"], r["K"]) for r in rows}:
        best, tiles = {}, {}
        for r in rows:
            if (r["N"], r["K"]) == nk and r["kernel"] in ("qlinear", "gluon_qlinear", "gluon_ws") \
                    and "+GELU" not in r["variant"]:
                key = (r["kernel"], r["variant"])
                if key not in best or r["fraction"] > best[key]["fraction"]:
                    best[key] = r
                tiles[(r["kernel"], r["variant"], r["tile"].split("/")[0])] = r
        g, t = ("gluon_ws", "W4→int8 g128"), ("qlinear", "W4→int8 g128")
        pg, pt = ("gluon_qlinear", "W4→int8 per-token"), ("qlinear", "W4→int8 per-token")
        wide, coop = tiles[(*g, "128x192")], tiles[(*g, "128x128")]
        small = best[("gluon_qlinear", "W4→int8 g128")]
        f = {k: r["fraction"] for k, r in best.items()}
        assert best[g] is wide and f[g] > f[t] * 1.35 and f[pg] > f[pt] * 1.04, (nk, f)
        for r in (best[pg], wide, coop, small):
            assert r["fraction_without_l2"] >= 0.70, r
        for r, (bm, bn) in ((best[pg], (256, 128)), (wide, (128, 192)), (coop, (128, 128)), (small, (128, 64))):
            assert r["bound"] == "L2", r
            # est = L2 time (+ a ragged last tile) + the weights' expansion pass: just under the tile's ceiling
            assert 0.93 * l2_ceiling(bm, bn) < r["fraction"] <= l2_ceiling(bm, bn) + 1e-3, (r, l2_ceiling(bm, bn))
        assert f[pg] > wide["fraction"] >= 0.70 > coop["fraction"] > small["fraction"], (nk, f)


def test_committed_estimates_of_the_ffn_up_epilogue():
    """The FFN-up whose epilogue quantizes the FFN-down's input: the warp-specialized Gluon kernel
    (kernels/gluon_ws.py) beats the Triton epilogue kernel on both Wan FFN-ups, group-128 and per-token input, in its
    cooperative 128x128 mode (the dispatch's): ping-pong's 64x128 tiles read 1.5x the L2 bytes per MAC and are
    L2-bound at ~40% of int8 peak; without the L2 bound ping-pong would be the faster (its epilogue under the other
    consumer's K loop). On the Gluon FFN-down rows it is the producer whose added time and bytes are reported, and it
    adds no bytes."""
    rows = json.loads(RESULTS.read_text())["shapes"]
    for up in ((8960, 1536), (13824, 5120)):
        at = [r for r in rows if (r["N"], r["K"]) == up]
        modes = {}
        for r in at:
            if r["kernel"] == "gluon_ws" and "+GELU" in r["variant"]:
                key = (r["variant"], "coop" if "/coop" in r["tile"] else "pp")
                if key not in modes or r["fraction"] > modes[key]["fraction"]:
                    modes[key] = r
        triton = max(r["fraction"] for r in at if r["kernel"] == "gelu_quant")
        assert len(modes) == 4 and triton < 0.5, (up, modes)
        for v in {v for v, _ in modes}:
            coop, pp = modes[(v, "coop")], modes[(v, "pp")]
            assert coop["fraction"] > triton and coop["fraction"] > pp["fraction"], (up, v)
            assert pp["bound"] == "L2" and pp["fraction"] <= l2_ceiling(64, 128) + 1e-3
            assert pp["fraction_without_l2"] >= coop["fraction_without_l2"] - 0.01, (up, v)
    downs = [r for r in rows if r["kernel"] == "gluon_qlinear" and (r["N"], r["K"]) in ((1536, 8960), (5120, 13824))]
    assert downs and all(r["ffn_epilogue_kernel"] == "gluon_ws" and r["ffn_epilogue_bytes_share"] < 0
                         for r in downs)


def test_committed_l2_traffic_column():
    """Every GEMM row says what its tiles read from L2, as time at L2's measured rate (a bound of the estimate) and
    as the rate the tiles would need without that bound: e.g. the Gluon group-128 tile (128x64) on 8960x1536 reads
    256·140 tiles x 1536 x (128 + 64) bytes, and the small Gluon tiles need about twice the rate of the Triton loops'
    128x256 tiles, which stay compute-bound."""
    rows = json.loads(RESULTS.read_text())["shapes"]
    assert all(r["l2_tbs"] > 0 and r["l2_tbs"] <= sass_model.L2_MEASURED / 1e12 + 0.05 for r in rows)
    assert all(r["fraction"] <= r["fraction_without_l2"] for r in rows)
    best = {(r["N"], r["K"], r["kernel"], r["variant"], r["tile"]): r for r in rows}
    g = best[(8960, 1536, "gluon_qlinear", "W4→int8 g128", "128x64/8w/8s/u12")]
    l2 = 256 * 140 * 1536 * 192
    assert abs(g["l2_us"] - l2 / sass_model.L2_MEASURED * 1e6) < 0.06 and g["bound"] == "L2"
    free_us = max(g["compute_us"], g["hbm_us"]) + g["expand_us"]
    assert abs(g["l2_tbs_without_l2"] - l2 / (free_us * 1e-6) / 1e12) < 0.06
    t = best[(8960, 1536, "qlinear", "W4→int8 per-token", "128x256/8w/3s")]
    assert g["l2_tbs_without_l2"] > 2 * t["l2_tbs_without_l2"]
    assert t["bound"] == "compute" and t["fraction"] == t["fraction_without_l2"]


def test_pingpong_model_on_hand_written_parts():
    """sass_model.pingpong_cycles on made-up partitions: each bound as its docstring defines it, and the largest
    one sets the tile's cycles."""
    S = sass_model.LoopStats
    # a K iteration: 4 int8 m64n128k32 wgmmas (1 Mi MACs = 256 clocks), 100 dispatches, 40 ALU instructions
    loop = S(loop=True, instructions=110, by_class={"uniform": 10}, pipe_cycles={"alu": 80}, macs={"int8": 2**20},
             smem_bytes=4 * (64 * 32 + 128 * 32), wait_depth=0, exposed_instructions=20,
             exposed_pipe_cycles={"alu": 300})
    epi = S(loop=False, instructions=600, pipe_cycles={"xu": 800}, macs={"fp16": 64 * 128 * 128}, smem_bytes=32768)
    loader = S(loop=True, instructions=10, by_class={"uniform": 8})
    c = sass_model.pingpong_cycles(loop, 3, epi, loader, 3, 3 * 2**20)
    assert c["mma_cycles"] == 3 * 256 + 512 and c["smem_cycles"] == (3 * 24576 + 32768) / 128
    # issue: slots 3·100 + 600 + 3·2 = 906; pipes alu 240, xu 800 -> 906
    assert c["issue_cycles"] == 906
    # chain: per iteration max(MMA 256, issue 110 - 10, MMA + exposed max(20, 300)) = 556, then the epilogue's
    # issue max(600, 800) and its wgmma 512: (3·556 + 800 + 512) / 2 = 1490, above the tensor bound 1280
    assert c["chain_cycles"] == 1490
    assert c["bound"] == "chain" and c["cycles"] == 1490 and abs(c["fraction"] - 768 / 1490) < 1e-12


def test_model_on_a_hand_written_loop():
    """The parser and the bounds on a tiny SASS listing: one loop of 4 int8 wgmmas waited to depth 0."""
    body = ["DEPBAR.LE SB0, 0x2", "WARPGROUP.ARRIVE"] + \
        ["IGMMA.64x128x32.S8.S8 R24, gdesc[UR8], R24"] * 4 + ["WARPGROUP.DEPBAR.LE gsb0, 0x0"] + \
        ["LOP3.LUT R1, R2, 0xf, RZ, 0xc0, !PT"] * 40 + ["I2FP.F32.S32 R3, R4"] * 10 + ["FFMA R5, R6, R7, R5"] * 10 + \
        ["@P6 BRA 0x0100"]
    sass = "\n".join(f"        /*{0x100 + 16 * i:04x}*/                   {ins} ;" for i, ins in enumerate(body))
    ins = sass_model.parse(sass)
    assert len(ins) == len(body) and sass_model.hot_loop(ins) == (0, len(body) - 1)
    st = sass_model.loop_stats(ins)
    assert st.wait_depth == 0 and st.macs == {"int8": 4 * 64 * 128 * 32} and st.by_class["unpack"] == 40
    # 8 warps: 2 warpgroups -> 2 x 1 Mi MACs = 512 clocks; ALU pipe 50 x 2 clocks x 2 warps per SMSP = 200
    c = sass_model.tile_cycles(st, warps=8, ctas=1, useful_macs=128 * 128 * 128)
    assert c["mma_cycles"] == 512 and c["issue_cycles"] == 200 and c["bound"] == "serial"
    assert c["cycles"] == 712 and abs(c["fraction"] - 512 / 712) < 1e-12
    # a second CTA on the SM hides none of the serialized time (CTA_OVERLAP = 0, measured on an H200)
    two = sass_model.tile_cycles(st, warps=8, ctas=2, useful_macs=128 * 128 * 128)
    assert sass_model.CTA_OVERLAP == 0.0 and two["bound"] == "serial" and two["cycles"] == 712
    assert sass_model.occupancy(regs=168, shared=98304, warps=4) == 2 and sass_model.occupancy(229, 81920, 8) == 1


def test_offline_compile_refuses_the_interpreter():
    """The test process runs with TRITON_INTERPRET=1: compile_sm90 must say why it cannot compile there."""
    from dvdq_compile.kernels.expand import _expand_kernel
    with pytest.raises(RuntimeError, match="without TRITON_INTERPRET"):
        aot.compile_sm90(_expand_kernel, {}, {}, 4, 1)


def test_committed_activation_bytes_per_producer():
    """Where the producer is fused (a norm for K = model dim, the FFN-up epilogue for the FFN-down, the attention
    kernel for to_out) the activation quantization adds no bytes; the FFN-up epilogue kernel compiles without spills at a tile where its K loop is as
    fast as the plain int8 loop's."""
    d = json.loads(RESULTS.read_text())
    rows = d["shapes"]
    downs = [r for r in rows if r["kernel"] == "qlinear" and (r["N"], r["K"]) in ((1536, 8960), (5120, 13824))]
    assert downs and all(r["ffn_epilogue_bytes_share"] <= 0.0 for r in downs)
    assert all(0.0 <= r["ffn_epilogue_added_share"] < 1.0 for r in downs)
    gelu = [r for r in d["kernels"] if r["kernel"] == "gelu_quant" and r.get("ok")]
    plain = {r["tile"]: r["fraction"] for r in d["kernels"]
             if (r["kernel"], r["variant"]) == ("qlinear", "W4→int8 g128") and r.get("ok")}
    # the epilogue leaves the K loop as fast as the plain int8 loop at the same tile, without spilling
    assert any(r["stack"] == 0 and r["fraction"] >= 0.95 * plain[r["tile"]] for r in gelu if r["tile"] in plain)
    # to_out (N = K = model dim): the attention kernel's epilogue writes codes instead of the 16-bit output
    outs = [r for r in rows if r["kernel"] in ("qlinear", "gluon_qlinear") and r["N"] == r["K"]]
    assert len({(r["N"], r["K"]) for r in outs}) == 2 and all(r["attn_fused_bytes_share"] < 0 for r in outs)


def test_model_counts_only_the_work_outside_the_wgmmas_in_flight():
    """A loop that keeps one wgmma in flight under the first rescale (wait to depth 1) and drains before the second
    (depth 0): only what runs with nothing in flight adds to the MMA time. An out-of-line try-wait retry block after
    the EXIT, branching back into the loop, is not a loop."""
    body = ["WARPGROUP.ARRIVE"] + ["IGMMA.64x128x32.S8.S8 R24, gdesc[UR8], R24"] * 2 + \
        ["IGMMA.64x128x32.S8.S8 R88, gdesc[UR8], R88"] * 2 + ["WARPGROUP.DEPBAR.LE gsb0, 0x1"] + \
        ["I2FP.F32.S32 R3, R24"] * 20 + ["WARPGROUP.DEPBAR.LE gsb0, 0x0"] + ["I2FP.F32.S32 R3, R88"] * 10 + \
        ["@P6 BRA 0x0100", "EXIT", "SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [UR4], R2", "@!P0 BRA 0x0110"]
    sass = "\n".join(f"        /*{0x100 + 16 * i:04x}*/                   {ins} ;" for i, ins in enumerate(body))
    ins = sass_model.parse(sass)
    assert sass_model.hot_loop(ins) == (0, 37) and sass_model.loops(ins) == [(0, 37)]
    st = sass_model.loop_stats(ins)
    # exposed: ARRIVE, the first IGMMA (issued with nothing in flight), the last 10 I2FP and the branch
    assert st.wait_depth == 0 and st.exposed_instructions == 13 and st.exposed_pipe_cycles == {"alu": 20}
    c = sass_model.tile_cycles(st, warps=8, ctas=1, useful_macs=128 * 128 * 128)
    # 8 warps = 2 per SMSP: MMA 512, issue max(38 x 2, 30 x 2 x 2) = 120, exposed max(13 x 2, 20 x 2) = 40
    assert c["mma_cycles"] == 512 and c["issue_cycles"] == 120 and c["exposed_cycles"] == 40
    assert c["bound"] == "serial" and c["cycles"] == 552


def test_committed_attention_kernel_record():
    """fuse_attn's kernel is in the instrument: compiled for sm_90 without spills at every GPU tile, with its share of
    the 16-bit tensor peak (a model: the next GPU window times it against SDPA)."""
    recs = [r for r in json.loads(RESULTS.read_text())["kernels"] if r["kernel"] == "attn_quant"]
    assert len(recs) == 2 and all(r["ok"] and r["stack"] == 0 and 0 < r["bf16_fraction"] <= 1 for r in recs), recs
