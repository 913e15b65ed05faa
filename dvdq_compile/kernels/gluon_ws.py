"""The W4A8 GEMM in Gluon, warp-specialized: a loader warp and two consumer warpgroups, in ping-pong or cooperatively,
with a 16-bit output or the FFN-up's GELU → rotate → quantize epilogue.

Same contract as :mod:`.gluon_qlinear` (reference: ``quant.qlinear_ref``) on int8 codes and int8-expanded weights,
and the same K loop per consumer (two int32 partials for group-128 scales, each rescale under the other partial's
wgmma; one accumulator for per-token scales), so its 16-bit output is the Triton kernel's to the bit. With ``GELU``
the epilogue writes the FFN-down's activation codes instead (``quant.gelu_quant_ref``; ``kernels/gelu_quant.py`` is
the Triton twin, with the same arithmetic): per 128-column group of the output, cast to the 16-bit dtype, tanh-GELU,
cast, rotate by the ±1 Hadamard block (on the tensor cores), quantize to int8 codes and one fp32 scale.

Three partitions share the SM:

- a **loader** warp issues the TMA loads of every K step of every tile of the program, in tile order, into a
  ``STAGES``-deep ring (a ``ready`` and an ``empty`` mbarrier per slot);
- two **consumer** warpgroups (the default partition and one worker, 4 warps each), each on 64 x 128 output rows
  per tile, handing each slot back once its wgmma is complete, then running the epilogue and storing through its own
  shared tile by TMA. **Ping-pong** (``COOP=False``): they take alternate 64 x 128 tiles and their K loops take
  turns (the ``turn`` mbarriers), so one consumer's K loop runs while the other is in its epilogue (CUTLASS's
  ordered schedule): the tensor cores work through the epilogues, which the FFN-up's long one needs (~1,900
  instructions per thread and tile). **Cooperative** (``COOP=True``): both work on one 128 x 128 tile (64 rows
  each) and every weight slot feeds both, so the tiles read a third fewer L2 bytes per MAC than 64 x 128 ones (L2
  bounds these kernels: ``bench/results/l2_probe_h200.md``), while their epilogues run side by side. **Wide**
  (``SPLIT``, group-128 GEMM only: :func:`_split_consumer`): a cooperative 128 x 192 tile, 1.2x fewer L2 bytes per
  MAC again, each consumer's share in a 128- and a 64-column accumulator with one int32 partial each.

Registers: launched at 168 per thread (12 warps = 3 warpgroups: 64,512 of the SM's 65,536), which ``setmaxnreg``
redistributes as 240 per consumer thread (two int32 partials and the fp32 sum: 192) and 24 for the loader's.
Shared memory (:func:`stages`): the ring, one output tile per consumer, the ±1 block with GELU.

The GELU epilogue does the Triton twin's arithmetic in fewer instructions where the result is the same to the bit:
the 16-bit round trip of a value pair in one ``cvt.rn.bf16x2.f32``, a NaN-propagating max (``max.NaN``) for the
group's absmax, the code read from the bits of the (clamped) rounding sum instead of a float → int conversion.

Cost per call: ``2·M·N·K`` int8 MACs, ``2·M·N·K/128`` fp32 rescale ops (group 128), with GELU ``M·N·128`` 16-bit
MACs of rotation; bytes ``M·K`` codes + ``4·M·K/128`` scales + ``N·K`` weights + the output (``2·M·N``, or ``M·N``
codes + ``4·M·N/128`` scales), each once from HBM; from L2 every CTA tile reads its K strips of both operands.

Gluon kernels only compile for a GPU (no interpreter): the CPU side compiles every mode for sm_90 (no spills, wgmma
waits kept above 0, each partition within its register budget: ``tests/kernels/aot_sm90.py``) and models it
(``bench/sass.py``, ``sass_model.pingpong_cycles``); the GPU tests compare the 16-bit output with the Triton kernel
bit for bit and the codes with the reference. Opt-in with the other Gluon kernels (``DVDQ_GLUON=1``).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                             warpgroup_mma_wait)

from . import gluon_qlinear as GQL

BLOCK_M = 64         # one consumer warpgroup's tile rows (one m64 wgmma); a cooperative CTA tile has two
BLOCK_N = 128        # a tile row = one group = one Hadamard block
BLOCK_N2 = 64        # the wide tile's second part: 128 x (128 + 64), 1.2x fewer L2 bytes per MAC than 128 x 128
CONSUMER_WARPS = 4   # one warpgroup per consumer: the default partition's num_warps
LAUNCH_REGS = 168    # per thread at launch (12 warps: 3 warpgroups), which setmaxnreg redistributes as
CONSUMER_REGS = 240  # 2 x 240 for the consumers
LOADER_REGS = 24     # + 24 for the loader's warpgroup = 504 = 3 x 168
_PARTITIONS = gl.constexpr((CONSUMER_WARPS, 1))    # worker partitions: consumer 1, loader
_REGS = gl.constexpr((CONSUMER_REGS, LOADER_REGS))
# (groups per loop iteration; 1: per-token), compiled and modelled offline
UNROLLS = (1, *GQL.UNROLLS)
# (GELU epilogue, cooperative) modes compiled and modelled offline; the dispatch runs the group-128 GEMM and the
# FFN-up cooperatively (128x128 tiles read 1.5x fewer L2 bytes per MAC than ping-pong's 64x128 ones, and L2 bounds
# both: bench/results/l2_probe_h200.md); per-token GEMMs stay on gluon_qlinear's 256x128 tile
MODES = ((True, False), (True, True), (False, True))


@gluon.jit
def _max_nan(a, b):
    return gl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)     # max.NaN.f32: one instruction


@gluon.jit
def _round_to(y, DT: gl.constexpr):
    """fp32 ``y`` rounded to DT (nearest, ties to even) and back. bf16: one ``cvt.rn.bf16x2.f32`` per element pair
    and two bit moves (a separate cvt per element would take the slow conversion pipe twice as often)."""
    if DT == gl.bfloat16:
        return gl.inline_asm_elementwise(
            "{ .reg .b32 t; cvt.rn.bf16x2.f32 t, $3, $2; shl.b32 $0, t, 16; and.b32 $1, t, 0xffff0000; }",
            "=r,=r,r,r", [y], dtype=gl.float32, is_pure=True, pack=2)
    else:
        return y.to(DT).to(gl.float32)


@gluon.jit
def _gelu_codes(y, h_smem, DT: gl.constexpr, QMAX: gl.constexpr, ROT_SCALE: gl.constexpr, BLOCK_M: gl.constexpr,
                BLOCK_N: gl.constexpr, num_warps: gl.constexpr):
    """The FFN-down's codes from the FFN-up output tile ``y`` (fp32, Δ and bias applied), as
    ``kernels/gelu_quant.py`` makes them (``quant.gelu_quant_ref``): cast to DT, tanh-GELU in fp32 (tl_common.gelu's
    formula), cast to DT, rotate by the ±1 block in ``h_smem`` on the tensor cores (exact products, fp32 sums) times
    ROT_SCALE, then one group per row (BLOCK_N = group = Hadamard block): ``s = absmax / qmax`` (NaN if the group
    holds one), codes ``round(x / s)`` (the correctly rounded quotient, ties to even) clamped to ±qmax, 0 where ``s``
    is 0 or not finite. Returns (int8 codes [BLOCK_M, BLOCK_N], fp32 scales [BLOCK_M])."""
    yf = _round_to(y, DT)
    y2 = yf * yf
    a = (yf / (1.0 + gl.exp2(yf * (-2.302208198144325 - 0.1029432395800235 * y2)))).to(DT)
    rl: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                 instr_shape=[16, BLOCK_N, 16])
    a_op = gl.convert_layout(a, gl.DotOperandLayout(operand_index=0, parent=rl, k_width=2))
    r = warpgroup_mma(a_op, h_smem, gl.zeros((BLOCK_M, BLOCK_N), gl.float32, rl), use_acc=False) * ROT_SCALE
    amax = gl.reduce(gl.abs(r), 1, _max_nan)     # a plain max drops NaN; torch's amax keeps it
    sc = gl.div_rn(amax, gl.full(amax.shape, QMAX, gl.float32, amax.type.layout))
    ok = ((sc - sc) == 0.0) & (sc > 0.0)
    safe = gl.where(ok, sc, 1.0)
    # RN(r / s) as tl_common.quotient computes it on a GPU (Markstein: one correctly rounded reciprocal per row, an
    # FMA-corrected product per element; inputs scaled by 2^64 when s < 2^-64), the Triton epilogue's numbers
    kk = gl.where(safe < 5.421010862427522e-20, 1.8446744073709552e19, 1.0)
    sk = (safe * kk)[:, None]
    xk = r * kk[:, None]
    rc = gl.div_rn(gl.full(sk.shape, 1.0, gl.float32, sk.type.layout), sk)
    q = xk * rc
    q = gl.fma(gl.fma(-q, sk, xk), rc, q)
    # t = 1.5·2^23 + round(q) (half to even: |q| is far below 2^22), clamped to ±qmax around 1.5·2^23: its low
    # byte is the code in two's complement (no float → int conversion). The clamp binds only where s is subnormal
    # (s = RN(amax / qmax) then loses relative precision and |x / s| can pass qmax)
    t = gl.minimum(gl.maximum(q + 12582912.0, 12582912.0 - QMAX), 12582912.0 + QMAX)
    c = gl.where(ok[:, None], t.to(gl.int32, bitcast=True), 0)
    return c.to(gl.int8), sc


@gluon.jit
def _scale_bias(acc, offs_n, N, ws_ptr, bias_ptr, HAS_BIAS: gl.constexpr):
    """The 16-bit output's fp32 value, in tl_common.scale_bias's order: acc · Δ[n] (+ float32(bias[n]))."""
    mask_n = offs_n < N
    acc = acc * gl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + gl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(gl.float32)[None, :]
    return acc


@gluon.jit
def _loader(a_desc, w_desc, w2_desc, a_bufs, w_bufs, w2_bufs, ready, empty, M, N, K, SPLIT: gl.constexpr,
            GROUP_M: gl.constexpr):
    """Every K step of every tile of this program, in tile order: wait for the slot to be empty, load (with
    ``SPLIT``, the tile's weight rows in two boxes: BN and then BN2 rows)."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    BN_T: gl.constexpr = BN + w2_desc.block_type.shape[0] if SPLIT else BN
    NBYTES: gl.constexpr = a_desc.block_type.nbytes + w_desc.block_type.nbytes + \
        (w2_desc.block_type.nbytes if SPLIT else 0)
    S: gl.constexpr = a_bufs.type.shape[0]
    pid, nprog, grid_m, grid_n, my_tiles, n_steps = GQL._schedule(M, N, K, BM, BN_T, BK)
    g = 0
    for t in range(my_tiles):
        off_m, off_n = GQL._tile(t, pid, nprog, grid_m, grid_n, BM, BN_T, GROUP_M)
        for k in range(n_steps):
            slot = g % S
            # empty barriers start in phase 0: the first pass over the ring waits on phase 1, already complete
            mbarrier.wait(empty.index(slot), ((g // S) & 1) ^ 1)
            mbarrier.expect(ready.index(slot), NBYTES)
            tma.async_copy_global_to_shared(a_desc, [off_m, k * BK], ready.index(slot), a_bufs.index(slot))
            tma.async_copy_global_to_shared(w_desc, [off_n, k * BK], ready.index(slot), w_bufs.index(slot))
            if SPLIT:
                tma.async_copy_global_to_shared(w2_desc, [off_n + BN, k * BK], ready.index(slot),
                                                w2_bufs.index(slot))
            g += 1


@gluon.jit
def _issue(g, a_bufs, w_bufs, ready, acc, use_acc, ROW0: gl.constexpr):
    """Wait for ring step ``g``'s operands, start its wgmma (async) into ``acc`` on this consumer's rows of the
    activation slot (``ROW0``: its first row in the CTA tile, 0 in ping-pong)."""
    S: gl.constexpr = a_bufs.type.shape[0]
    ROWS: gl.constexpr = acc.type.shape[0]
    slot = g % S
    mbarrier.wait(ready.index(slot), (g // S) & 1)
    return warpgroup_mma(a_bufs.index(slot).slice(ROW0, ROWS), w_bufs.index(slot).permute((1, 0)), acc,
                         use_acc=use_acc, is_async=True)


@gluon.jit
def _retire(p, g, k, acc, s_rows, mask_m, empty):
    """Ring step ``g`` (the tile's group ``k``) has completed with partial ``p``: hand its slot back to the loader
    and add ``s[:, k] · float(p)`` to ``acc``."""
    S: gl.constexpr = empty.type.shape[0]
    mbarrier.arrive(empty.index(g % S), count=1)
    s = gl.load(s_rows + k, mask=mask_m, other=0.0)
    return acc + p.to(gl.float32) * s[:, None]


@gluon.jit
def _groups(base, g, UNROLL: gl.constexpr, acc, pa, pb, s_rows, mask_m, a_bufs, w_bufs, ready, empty,
            ROW0: gl.constexpr):
    """The tile's groups ``g .. g + UNROLL − 1``: :func:`.gluon_qlinear._groups`'s schedule (two alternating int32
    partials, each rescale under the other's wgmma, everything waited for before the loop's back-edge), with the
    slots released to the loader partition instead of refilled in place."""
    pa = _issue(base + g, a_bufs, w_bufs, ready, pa, False, ROW0)
    pb = _issue(base + g + 1, a_bufs, w_bufs, ready, pb, False, ROW0)
    for i in gl.static_range(0, UNROLL - 2, 2):
        pa, acc = warpgroup_mma_wait(1, deps=(pa, acc))
        acc = _retire(pa, base + g + i, g + i, acc, s_rows, mask_m, empty)
        pa = _issue(base + g + i + 2, a_bufs, w_bufs, ready, pa, False, ROW0)
        pb, acc = warpgroup_mma_wait(1, deps=(pb, acc))
        acc = _retire(pb, base + g + i + 1, g + i + 1, acc, s_rows, mask_m, empty)
        pb = _issue(base + g + i + 3, a_bufs, w_bufs, ready, pb, False, ROW0)
    pa, acc = warpgroup_mma_wait(1, deps=(pa, acc))
    acc = _retire(pa, base + g + UNROLL - 2, g + UNROLL - 2, acc, s_rows, mask_m, empty)
    pb, acc = warpgroup_mma_wait(0, deps=(pb, acc))
    acc = _retire(pb, base + g + UNROLL - 1, g + UNROLL - 1, acc, s_rows, mask_m, empty)
    return acc, pa, pb


@gluon.jit
def _consumer(c: gl.constexpr, a_desc, w_desc, c_desc, a_bufs, w_bufs, ready, empty, turn, c_smem, h_smem, s_ptr,
              ws_ptr, bias_ptr, cs_ptr, M, N, K, stride_sm, stride_csm, PER_TOKEN: gl.constexpr,
              HAS_BIAS: gl.constexpr, UNROLL: gl.constexpr, GELU: gl.constexpr, COOP: gl.constexpr,
              QMAX: gl.constexpr, ROT_SCALE: gl.constexpr, GROUP_M: gl.constexpr):
    """Consumer ``c`` (0: the default partition, 1: a worker): ping-pong, the program's tiles c, c + 2, ...;
    cooperative, rows ``c·BM ..`` of every tile. Per tile the K loop, then the epilogue (Δ, bias, and with GELU
    :func:`_gelu_codes` and one scale per row), out through its own shared tile and a TMA store."""
    BM_CTA: gl.constexpr = a_desc.block_type.shape[0]   # the CTA tile's rows: BM, or 2·BM when cooperative
    BM: gl.constexpr = c_desc.block_type.shape[0]       # this consumer's rows
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    NW: gl.constexpr = gl.num_warps()
    ROW0: gl.constexpr = c * BM if COOP else 0
    FIRST: gl.constexpr = 0 if COOP else c
    STEP: gl.constexpr = 1 if COOP else 2
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1],
                                                     instr_shape=[16, BN, 32])
    pid, nprog, grid_m, grid_n, my_tiles, n_steps = GQL._schedule(M, N, K, BM_CTA, BN, BK)
    out = c_smem.index(c)
    for t in range(FIRST, my_tiles, STEP):
        off_m, off_n = GQL._tile(t, pid, nprog, grid_m, grid_n, BM_CTA, BN, GROUP_M)
        off_m = off_m + ROW0
        offs_m = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
        offs_n = off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, layout))
        mask_m = offs_m < M
        s_rows = s_ptr + offs_m * stride_sm
        base = t * n_steps
        if not COOP:
            # ping-pong: the K loops run in tile order, one consumer at a time (consumer 0's first passes at once).
            # Unordered, a consumer's ring waits could run more than one ring pass ahead of the loader, where an
            # mbarrier's phase parity aliases: a wait passes on an old phase (stale operands, extra releases, and
            # then a hang; this is what the first GPU run of this schedule did)
            mbarrier.wait(turn.index(c), ((t // 2) & 1) ^ (1 - c))
        if PER_TOKEN:
            p = gl.zeros((BM, BN), gl.int32, layout)
            p = _issue(base, a_bufs, w_bufs, ready, p, False, ROW0)
            p = warpgroup_mma_wait(1, deps=(p, ))
            for k in range(1, n_steps):
                p = _issue(base + k, a_bufs, w_bufs, ready, p, True, ROW0)
                p = warpgroup_mma_wait(1, deps=(p, ))
                mbarrier.arrive(empty.index((base + k - 1) % empty.type.shape[0]), count=1)
            p = warpgroup_mma_wait(0, deps=(p, ))
            mbarrier.arrive(empty.index((base + n_steps - 1) % empty.type.shape[0]), count=1)
            s = gl.load(s_rows, mask=mask_m, other=0.0)
            acc = p.to(gl.float32) * s[:, None]
        else:
            acc = gl.zeros((BM, BN), gl.float32, layout)
            pa = gl.zeros((BM, BN), gl.int32, layout)
            pb = gl.zeros((BM, BN), gl.int32, layout)
            for g in range(0, n_steps, UNROLL):
                acc, pa, pb = _groups(base, g, UNROLL, acc, pa, pb, s_rows, mask_m, a_bufs, w_bufs, ready, empty,
                                      ROW0)
        if not COOP:   # every slot of this tile is released: the other consumer's K loop may start
            mbarrier.arrive(turn.index(1 - c), count=1)
        if GELU:
            # N is a multiple of BN (supported): unmasked, the column pairs each thread holds load as vectors
            ws = gl.load(ws_ptr + offs_n)
            acc = acc * ws[None, :]
            if HAS_BIAS:
                b = gl.load(bias_ptr + offs_n).to(gl.float32)
                acc = acc + b[None, :]
            codes, sc = _gelu_codes(acc, h_smem, h_smem.dtype, QMAX, ROT_SCALE, BM, BN, NW)
            tma.store_wait(pendings=0)      # this consumer's previous store has read its codes tile
            out.store(codes)
            gl.store(cs_ptr + offs_m.to(gl.int64) * stride_csm + off_n // BN,
                     gl.convert_layout(sc, gl.SliceLayout(1, layout)), mask=mask_m)
        else:   # the 16-bit output
            acc = _scale_bias(acc, offs_n, N, ws_ptr, bias_ptr, HAS_BIAS)
            tma.store_wait(pendings=0)
            out.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [off_m, off_n], out)
    tma.store_wait(pendings=0)


@gluon.jit
def _split_consumer(c: gl.constexpr, a_desc, c_desc, c2_desc, a_bufs, w_bufs, w2_bufs, ready, empty, c_smem,
                    c2_smem, s_ptr, ws_ptr, bias_ptr, M, N, K, stride_sm, HAS_BIAS: gl.constexpr,
                    GROUP_M: gl.constexpr):
    """Consumer ``c`` of the wide cooperative tile (``SPLIT``): rows ``c·BM ..`` of every 128 x (BN + BN2) tile,
    group-128 input, a 16-bit output. Its 64 x 192 share is two wgmma accumulators (BN = 128 and BN2 = 64 columns:
    tensor shapes are powers of two), with one int32 partial each: per group both wgmmas are issued, the first
    partial is rescaled under the second's wgmma, then the second, while the other consumer's wgmmas keep the tensor
    core busy. Registers: 2 x (64 + 32) per thread, as the 128-wide tile's two partials and sum (3 x 64). Same sums
    in the same order as the Triton loop (acc += float(P_k)·s[:, k], then Δ and bias), so the same bits."""
    BM: gl.constexpr = c_desc.block_type.shape[0]
    BN: gl.constexpr = c_desc.block_type.shape[1]
    BN2: gl.constexpr = c2_desc.block_type.shape[1]
    BM_CTA: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    NW: gl.constexpr = gl.num_warps()
    S: gl.constexpr = a_bufs.type.shape[0]
    l1: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BN, 32])
    l2: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BN2, 32])
    pid, nprog, grid_m, grid_n, my_tiles, n_steps = GQL._schedule(M, N, K, BM_CTA, BN + BN2, BK)
    out, out2 = c_smem.index(c), c2_smem.index(c)
    for t in range(my_tiles):
        off_m, off_n = GQL._tile(t, pid, nprog, grid_m, grid_n, BM_CTA, BN + BN2, GROUP_M)
        off_m = off_m + c * BM
        offs_m = off_m + gl.arange(0, BM, layout=gl.SliceLayout(1, l1))
        mask_m = offs_m < M
        s_rows = s_ptr + offs_m * stride_sm
        acc1 = gl.zeros((BM, BN), gl.float32, l1)
        acc2 = gl.zeros((BM, BN2), gl.float32, l2)
        p1 = gl.zeros((BM, BN), gl.int32, l1)
        p2 = gl.zeros((BM, BN2), gl.int32, l2)
        for k in range(n_steps):
            g = t * n_steps + k
            slot = g % S
            s1 = gl.load(s_rows + k, mask=mask_m, other=0.0)     # in flight under the wgmmas
            mbarrier.wait(ready.index(slot), (g // S) & 1)
            a = a_bufs.index(slot).slice(c * BM, BM)
            p1 = warpgroup_mma(a, w_bufs.index(slot).permute((1, 0)), p1, use_acc=False, is_async=True)
            p2 = warpgroup_mma(a, w2_bufs.index(slot).permute((1, 0)), p2, use_acc=False, is_async=True)
            p1, acc1 = warpgroup_mma_wait(1, deps=(p1, acc1))
            acc1 = acc1 + p1.to(gl.float32) * s1[:, None]
            p2, acc2 = warpgroup_mma_wait(0, deps=(p2, acc2))
            mbarrier.arrive(empty.index(slot), count=1)
            acc2 = acc2 + p2.to(gl.float32) * gl.convert_layout(s1, gl.SliceLayout(1, l2))[:, None]
        # the 16-bit output of both parts
        acc1 = _scale_bias(acc1, off_n + gl.arange(0, BN, layout=gl.SliceLayout(0, l1)), N, ws_ptr, bias_ptr, HAS_BIAS)
        acc2 = _scale_bias(acc2, off_n + BN + gl.arange(0, BN2, layout=gl.SliceLayout(0, l2)), N, ws_ptr, bias_ptr,
                           HAS_BIAS)
        tma.store_wait(pendings=0)      # this consumer's previous stores have read both tiles
        out.store(acc1.to(c_desc.dtype))
        out2.store(acc2.to(c2_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [off_m, off_n], out)
        tma.async_copy_shared_to_global(c2_desc, [off_m, off_n + BN], out2)
    tma.store_wait(pendings=0)


@gluon.jit
def _ws_kernel(a_desc, w_desc, c_desc, w2_desc, c2_desc, s_ptr, ws_ptr, bias_ptr, h_ptr, cs_ptr, M, N, K, stride_sm,
               stride_csm, PER_TOKEN: gl.constexpr, HAS_BIAS: gl.constexpr, UNROLL: gl.constexpr,
               GELU: gl.constexpr, COOP: gl.constexpr, SPLIT: gl.constexpr, QMAX: gl.constexpr,
               ROT_SCALE: gl.constexpr, GROUP_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Persistent, one program per SM: shared buffers and barriers (a slot is empty once every consumer reading it
    has arrived), the ±1 block into shared memory with GELU, then the three partitions (module docstring)."""
    BM: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BN: gl.constexpr = w_desc.block_type.shape[0]
    a_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BM, BK], a_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BN, BK], w_desc.layout)
    if SPLIT:   # the wide tile's last BN2 weight rows, and its second output tile per consumer
        w2_bufs = gl.allocate_shared_memory(gl.int8, [STAGES] + w2_desc.block_type.shape, w2_desc.layout)
        c2_smem = gl.allocate_shared_memory(c2_desc.dtype, [2] + c2_desc.block_type.shape, c2_desc.layout)
    else:
        w2_bufs = w_bufs     # never read
        c2_smem = w_bufs
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())   # ping-pong: whose K loop
    c_smem = gl.allocate_shared_memory(c_desc.dtype, [2] + c_desc.block_type.shape, c_desc.layout)
    if GELU:
        hl: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        hr = gl.arange(0, BN, layout=gl.SliceLayout(1, hl))
        hc = gl.arange(0, BN, layout=gl.SliceLayout(0, hl))
        hv = gl.load(h_ptr + hr[:, None] * BN + hc[None, :])
        h_smem = gl.allocate_shared_memory(h_ptr.dtype.element_ty, [BN, BN],
                                           gl.NVMMASharedLayout.get_default_for([BN, BN], h_ptr.dtype.element_ty), hv)
    else:
        h_smem = c_smem   # never read
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=2 if COOP else 1)   # cooperative: both consumers read every slot
    for i in gl.static_range(2):
        mbarrier.init(turn.index(i), count=1)
    fence_async_shared()
    if SPLIT:
        gl.warp_specialize([
            (_split_consumer, (0, a_desc, c_desc, c2_desc, a_bufs, w_bufs, w2_bufs, ready, empty, c_smem, c2_smem,
                               s_ptr, ws_ptr, bias_ptr, M, N, K, stride_sm, HAS_BIAS, GROUP_M)),
            (_split_consumer, (1, a_desc, c_desc, c2_desc, a_bufs, w_bufs, w2_bufs, ready, empty, c_smem, c2_smem,
                               s_ptr, ws_ptr, bias_ptr, M, N, K, stride_sm, HAS_BIAS, GROUP_M)),
            (_loader, (a_desc, w_desc, w2_desc, a_bufs, w_bufs, w2_bufs, ready, empty, M, N, K, SPLIT, GROUP_M)),
        ], _PARTITIONS, _REGS)
    else:
        gl.warp_specialize([
            (_consumer, (0, a_desc, w_desc, c_desc, a_bufs, w_bufs, ready, empty, turn, c_smem, h_smem, s_ptr,
                         ws_ptr, bias_ptr, cs_ptr, M, N, K, stride_sm, stride_csm, PER_TOKEN, HAS_BIAS, UNROLL, GELU,
                         COOP, QMAX, ROT_SCALE, GROUP_M)),
            (_consumer, (1, a_desc, w_desc, c_desc, a_bufs, w_bufs, ready, empty, turn, c_smem, h_smem, s_ptr,
                         ws_ptr, bias_ptr, cs_ptr, M, N, K, stride_sm, stride_csm, PER_TOKEN, HAS_BIAS, UNROLL, GELU,
                         COOP, QMAX, ROT_SCALE, GROUP_M)),
            (_loader, (a_desc, w_desc, w2_desc, a_bufs, w_bufs, w2_bufs, ready, empty, M, N, K, SPLIT, GROUP_M)),
        ], _PARTITIONS, _REGS)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(ready.index(i))
        mbarrier.invalidate(empty.index(i))
    for i in gl.static_range(2):
        mbarrier.invalidate(turn.index(i))


# ----------------------------------------------------------------------------------------------------------------
# host side


def stages(gelu: bool, coop: bool, wide: bool = False) -> int:
    """Ring depth that fits 227 KiB with the mode's other buffers (a step: the CTA tile's activation rows and its
    weight rows, K = 128 int8 each; a 64-row output tile per consumer, int8 codes or 16-bit; the ±1 block)."""
    bn = BLOCK_N + (BLOCK_N2 if wide else 0)
    step = (BLOCK_M * (2 if coop else 1) + bn) * GQL.BLOCK_K
    other = 2 * BLOCK_M * bn * (1 if gelu else 2) + (BLOCK_N * BLOCK_N * 2 if gelu else 0)
    return min(8, (227 * 1024 - other - 1024) // step)


def offline_spec(unroll: int, gelu: bool = True, coop: bool = False, wide: bool = False) -> tuple[dict, dict]:
    """(signature, constexprs) for an offline sm_90 compile (kernels/aot.py) at ``unroll`` groups per iteration
    (1: per-token input), with the GELU epilogue or a bf16 output, ping-pong or cooperative; ``wide``: the
    cooperative 128 x 192 tile (group-128 input, bf16 output; ``unroll`` unused)."""
    out = torch.int8 if gelu else torch.bfloat16
    w2, c2 = (BLOCK_N2, BLOCK_N2) if wide else (BLOCK_N, BLOCK_N)
    sig = {"a_desc": GQL.desc_type(BLOCK_M * (2 if coop else 1)), "w_desc": GQL.desc_type(BLOCK_N),
           "c_desc": GQL.desc_type(BLOCK_M, BLOCK_N, out), "w2_desc": GQL.desc_type(w2),
           "c2_desc": GQL.desc_type(BLOCK_M, c2, out), "s_ptr": "*fp32", "ws_ptr": "*fp32",
           "bias_ptr": "*bf16", "h_ptr": "*bf16", "cs_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32",
           "stride_sm": "i32", "stride_csm": "i32"}
    const = dict(PER_TOKEN=unroll == 1 and not wide, HAS_BIAS=True, UNROLL=unroll, GELU=gelu, COOP=coop,
                 SPLIT=wide, QMAX=127, ROT_SCALE=128 ** -0.5, GROUP_M=8, STAGES=stages(gelu, coop, wide),
                 num_warps=CONSUMER_WARPS)
    return sig, const


def _groups_ok(k: int, ga: int, expanded: bool) -> str | None:
    if not expanded:
        return "needs int8-expanded weights (kernels/expand.py)"
    if k % GQL.BLOCK_K:
        return f"K={k} is not a multiple of {GQL.BLOCK_K}"
    if ga != k and ga != GQL.BLOCK_K:
        return f"activation group {ga}: only {GQL.BLOCK_K} or per-token (K)"
    if ga == GQL.BLOCK_K and (k // GQL.BLOCK_K) % 2:
        return f"K={k} has an odd number of 128-groups (the group loop runs two at a time)"
    return None


def supported(n: int, k: int, ga: int, expanded: bool, out_dtype: torch.dtype) -> str | None:
    """Why this kernel cannot run a GEMM with a 16-bit output (None: it can): int8-expanded weights, K a multiple of
    128 with an even number of 128-groups (group-128 input) or per-token input, a 16-bit output whose rows a TMA
    store can address (N a multiple of 8)."""
    why = _groups_ok(k, ga, expanded)
    if why:
        return why
    if out_dtype not in (torch.bfloat16, torch.float16):
        return f"output dtype {out_dtype}: only bf16 or fp16"
    if n % 8:
        return f"N={n} rows of {out_dtype} are not a multiple of 16 bytes (the TMA store)"
    return None


def supported_gelu(n: int, k: int, ga: int, expanded: bool, group: int, rotate: int, out_dtype: torch.dtype,
                   approximate: str) -> str | None:
    """Why the FFN-up with the GELU epilogue cannot make an FFN-down's codes (None: it can): the GEMM's conditions,
    tanh-GELU computed in a 16-bit dtype, group = Hadamard block = 128 (the tile width) and N a multiple of 128
    (whole tiles: unmasked columns, the codes' TMA rows)."""
    why = _groups_ok(k, ga, expanded)
    if why:
        return why
    if approximate != "tanh" or out_dtype not in (torch.bfloat16, torch.float16):
        return f"GELU {approximate!r} with a {out_dtype} output: tanh-GELU in 16 bits only"
    if group != BLOCK_N or rotate != BLOCK_N or n % BLOCK_N:
        return f"group {group}, Hadamard block {rotate}, N={n}: {BLOCK_N}, {BLOCK_N} and a multiple of {BLOCK_N}"
    return None


def _launch(a, s, w, ws, bias, out, h, cs, per_token: bool, gelu: bool, coop: bool, qmax: int = 1,
            rot_scale: float = 1.0, wide: bool = False) -> None:
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    m, k = a.shape
    n = w.shape[0]
    bm = BLOCK_M * (2 if coop else 1)
    a_desc = TensorDescriptor.from_tensor(a, [bm, GQL.BLOCK_K], GQL.smem_layout(bm))
    w_desc = TensorDescriptor.from_tensor(w, [BLOCK_N, GQL.BLOCK_K], GQL.smem_layout(BLOCK_N))
    c_desc = TensorDescriptor.from_tensor(out, [BLOCK_M, BLOCK_N], GQL.smem_layout(BLOCK_M, BLOCK_N, out.dtype))
    if wide:
        w2_desc = TensorDescriptor.from_tensor(w, [BLOCK_N2, GQL.BLOCK_K], GQL.smem_layout(BLOCK_N2))
        c2_desc = TensorDescriptor.from_tensor(out, [BLOCK_M, BLOCK_N2],
                                               GQL.smem_layout(BLOCK_M, BLOCK_N2, out.dtype))
    else:
        w2_desc, c2_desc = w_desc, c_desc    # never read
    bn = BLOCK_N + (BLOCK_N2 if wide else 0)
    grid = (min(triton.cdiv(m, bm) * triton.cdiv(n, bn), GQL.sms(a.device)),)
    unroll = 1 if per_token or wide else GQL.unroll_for(k // GQL.BLOCK_K)
    _ws_kernel[grid](a_desc, w_desc, c_desc, w2_desc, c2_desc, s, ws, bias if bias is not None else ws, h, cs, m, n,
                     k, s.stride(0), cs.stride(0), PER_TOKEN=per_token, HAS_BIAS=bias is not None, UNROLL=unroll,
                     GELU=gelu, COOP=coop, SPLIT=wide, QMAX=qmax, ROT_SCALE=rot_scale, GROUP_M=8,
                     STAGES=stages(gelu, coop, wide), num_warps=CONSUMER_WARPS, maxnreg=LAUNCH_REGS)


def ws_qlinear(a: torch.Tensor, s: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None,
               out: torch.Tensor, per_token: bool, coop: bool = True, wide: bool = False) -> torch.Tensor:
    """``out`` [M, N] (bf16 / fp16) = the W4A8 GEMM of :func:`.gluon_qlinear.gluon_qlinear` (same arguments, same
    bits), warp-specialized: cooperative 128 x 128 tiles by default, ping-pong 64 x 128 ones with ``coop=False``,
    cooperative 128 x 192 ones with ``wide`` (group-128 input only: :func:`_split_consumer`). CUDA only; the caller
    checks :func:`supported`."""
    if wide and (per_token or not coop):
        raise ValueError("gluon_ws: the wide 128x192 tile runs group-128 input cooperatively; got "
                         f"per_token={per_token}, coop={coop}")
    _launch(a, s, w, ws, bias, out, ws, s, per_token, gelu=False, coop=coop, wide=wide)
    return out


def ffn_up_gelu_quant(a: torch.Tensor, s: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None,
                      h: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, per_token: bool, rot_scale: float,
                      qmax: int, coop: bool = True) -> None:
    """The FFN-up GEMM (as :func:`ws_qlinear`) whose epilogue writes the FFN-down's codes ``codes`` int8 [M, N] and
    scales ``scales`` fp32 [M, N/128]: tanh-GELU of the output in ``h``'s dtype, rotated by the ±1 block ``h``
    [128, 128] times ``rot_scale``, quantized per 128-group to ±``qmax`` (``kernels/gelu_quant.py`` is the Triton
    twin). Cooperative 128 x 128 tiles by default (the fewer L2 bytes per MAC: L2 bounds this GEMM on Hopper);
    ping-pong with ``coop=False`` (its epilogue under the other consumer's K loop: the faster where L2 does not
    bind). CUDA only; the caller checks :func:`supported_gelu`."""
    _launch(a, s, w, ws, bias, codes, h, scales, per_token, gelu=True, coop=coop, qmax=qmax, rot_scale=rot_scale)
