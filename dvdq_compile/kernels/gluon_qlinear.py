"""W4A8 GEMM on int8-expanded weights in Gluon, with the per-group rescale overlapped with the next group's wgmma.

Same contract as the int8-native path of :mod:`.qlinear` (reference: :func:`dvdq_compile.quant.qlinear_ref`)::

    y[m, n] = Δ[n] · Σ_g s[m, g] · P_g[m, n]  + bias[n],   P_g = Σ_{k∈g} xq[m, k] · (q[n, k] − z[n])  (int32)

with ``q − z`` already expanded to int8 [N, K] (:mod:`.expand`), and the fp32 sum taken in group order, the
reference's order, so it gives the Triton kernel's numbers to the bit on the same device.

Why Gluon: Triton's software pipeliner makes a ``wgmma`` asynchronous only when its accumulator is fp32 (rule
2.1 of ``WGMMAPipeline.cpp``, Triton 3.6/3.7); an int8 ``tl.dot`` accumulates in int32, so every one is followed by
``wgmma.wait_group 0`` and the tensor core idles while the CUDA cores convert and rescale the group's partial sum
(``bench/results/sass.md``: MMA + issue add up; 53% of int8 peak at best for group 128). Gluon exposes the wait.
Group 128 (:func:`_groups`): two int32 partials alternate, group i + 2's wgmma is issued as soon as group i's partial
is rescaled, so each rescale runs under the other partial's wgmma; an iteration covers 2-12 groups (the largest count
dividing K/128, unrolled at trace time) and drains its wgmmas, because ptxas serializes every wgmma when a partial is
read after a loop back-edge. Per-token scales accumulate all of K into one int32 accumulator with one wgmma in
flight. Operands come through TMA into a ``STAGES``-deep shared-memory ring with one mbarrier per slot; a slot is
refilled once the wgmma that read it is known complete. Persistent: one program per SM walks its tiles, the ring
runs on across them, and the output leaves through shared memory and a TMA store under the next tile. The
warp-specialized kernel on the same K loop (:mod:`.gluon_ws`) runs the group-128 GEMM on 128x128 tiles and the
FFN-up with its GELU → rotate → quantize epilogue; the dispatch uses this one for per-token scales (256x128).

Cost (as :mod:`.qlinear` on expanded weights): ``2·M·N·K`` int8 MACs, ``2·M·N·K/128`` fp32 ops for the rescale;
bytes ``M·K`` codes + ``4·M·K/128`` scales + ``N·K`` weights + ``8·N`` + ``2·M·N`` out, each operand once.

Not in the interpreter: Gluon kernels only compile for a GPU, so the CPU side checks that it compiles for sm_90
without spills and what its SASS allows (``bench/sass.py``); the GPU tests compare it bit for bit with the Triton
kernel and within tolerance with the reference. Dispatch uses it only when ``DVDQ_GLUON=1`` until a GPU has
confirmed it (``use_gluon``).
"""
from __future__ import annotations

import os

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                             warpgroup_mma_wait)

BLOCK_K = 128                  # one K step = one activation group (group 128) and one TMA box
UNROLLS = (12, 10, 6, 4, 2)     # groups per loop iteration, the largest that divides K/128 (unroll_for)
# (BLOCK_M, BLOCK_N, warps, stages, groups per iteration; 1: per-token), compiled and modelled offline
# (tests/kernels/aot_sm90.py, bench/sass.py; sm_90). Group 128: 128x64 / 8 warps (two int32 partials and the fp32
# sum); at 128x128 they take 242 registers and ptxas sinks the first rescale below the last wait. Per-token (one
# partial): 256x128 / 8 warps, a 128x128 int32 accumulator per warpgroup (254 registers); 128x128 also compiles.
GROUPED_TILES = tuple((128, 64, 8, 8, u) for u in UNROLLS)
# 256x128 reads a quarter fewer L2 bytes per MAC than 128x128 (the model has no L2 bound, and the Gluon tiles' L2
# rates are its largest blind spot: docs/architecture.md §6) and is modelled 2-8 points faster on every Wan shape
# (fewer tiles, the same MMA-bound loop); bench/first_window.py times both. 128x256 does not compile (Triton
# 3.7.1's NVGPU lowering fails on it).
PER_TOKEN_TILE = (256, 128, 8, 3, 1)
PER_TOKEN_TILE_SQUARE = (128, 128, 8, 4, 1)
STAGES_MAX = 8
TILES = (PER_TOKEN_TILE, PER_TOKEN_TILE_SQUARE, *GROUPED_TILES)


@gluon.jit
def _tile(t, pid, nprog, grid_m, grid_n, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GROUP_M: gl.constexpr):
    """(off_m, off_n) of this program's t-th tile: tile ``pid + t·nprog`` in tl_common.swizzle's grouped order (L2
    reuse of the activation rows)."""
    tile = pid + t * nprog
    width = GROUP_M * grid_n
    first_m = (tile // width) * GROUP_M
    # past the last tile (the corner a predicated-off refill is given) rows would be <= 0: keep the modulo defined
    rows = gl.maximum(gl.minimum(grid_m - first_m, GROUP_M), 1)
    return (first_m + (tile % width) % rows) * BLOCK_M, ((tile % width) // rows) * BLOCK_N


@gluon.jit
def _schedule(M, N, K, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BK: gl.constexpr):
    """This program's share of the persistent grid: (pid, programs, tile rows, tile columns, its tile count, K steps
    per tile)."""
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    grid_m = gl.cdiv(M, BLOCK_M)
    grid_n = gl.cdiv(N, BLOCK_N)
    return pid, nprog, grid_m, grid_n, (grid_m * grid_n - pid + nprog - 1) // nprog, K // BK


@gluon.jit
def _load(k, off_m, off_n, pred, g, a_desc, w_desc, a_bufs, w_bufs, bars, STAGES: gl.constexpr):
    """Load K step ``k`` of the tile at (off_m, off_n) into ring slot g % STAGES (``g``: the program's running step
    count), if ``pred``. Predicated, not branched (a branch in the K loop is one more thing ptxas's wgmma analysis
    must see through)."""
    BK: gl.constexpr = a_desc.block_type.shape[1]
    slot = g % STAGES
    mbarrier.expect(bars.index(slot), a_desc.block_type.nbytes + w_desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(a_desc, [off_m, k * BK], bars.index(slot), a_bufs.index(slot), pred=pred)
    tma.async_copy_global_to_shared(w_desc, [off_n, k * BK], bars.index(slot), w_bufs.index(slot), pred=pred)


@gluon.jit
def _refill(g, k, ring, STAGES: gl.constexpr):
    """Step ``g`` (the tile's K step ``k``) has completed: its slot takes step g + STAGES, which is K step
    k + STAGES of this tile or, past its end, of the program's next tile (n_steps >= STAGES: supported()); no
    division in the K loop, the next tile's corner is computed once per tile."""
    total, n_steps, off_m, off_n, nxt_m, nxt_n, a_desc, w_desc, a_bufs, w_bufs, bars = ring
    kk = k + STAGES
    nxt = (kk >= n_steps).to(gl.int32)
    _load(kk - n_steps * nxt, off_m + (nxt_m - off_m) * nxt, off_n + (nxt_n - off_n) * nxt, g + STAGES < total,
          g + STAGES, a_desc, w_desc, a_bufs, w_bufs, bars, STAGES)


@gluon.jit
def _issue(g, a_bufs, w_bufs, bars, acc, use_acc, STAGES: gl.constexpr):
    """Wait for step ``g``'s operands, then start its wgmma (async) into ``acc``."""
    slot = g % STAGES
    mbarrier.wait(bars.index(slot), (g // STAGES) & 1)
    return warpgroup_mma(a_bufs.index(slot), w_bufs.index(slot).permute((1, 0)), acc, use_acc=use_acc,
                         is_async=True)


@gluon.jit
def _retire(p, base, k, acc, s_rows, mask_m, ring, STAGES: gl.constexpr):
    """The tile's group ``k`` (ring step base + k) has completed with partial ``p``: refill its slot and add
    ``s[:, k] · float(p)`` to ``acc``."""
    _refill(base + k, k, ring, STAGES)
    s = gl.load(s_rows + k, mask=mask_m, other=0.0)
    return acc + p.to(gl.float32) * s[:, None]


@gluon.jit
def _groups(base, g, UNROLL: gl.constexpr, acc, pa, pb, s_rows, mask_m, ring, STAGES: gl.constexpr):
    """The tile's groups ``g .. g + UNROLL − 1`` (UNROLL even; ring steps ``base + g ..``), alternating between the
    int32 partials ``pa`` / ``pb``: group i + 2's wgmma is issued as soon as group i's partial is rescaled, so each
    rescale runs under the other partial's wgmma; only the last rescale is exposed. Everything is waited for before
    returning: nothing may be in flight across a loop's back-edge, because ptxas cannot follow wgmma completion
    around a loop and then serializes every wgmma (warning C7514; found compiling this kernel offline). Unrolled at
    trace time (static_range)."""
    a_bufs, w_bufs, bars = ring[8], ring[9], ring[10]
    pa = _issue(base + g, a_bufs, w_bufs, bars, pa, False, STAGES)
    pb = _issue(base + g + 1, a_bufs, w_bufs, bars, pb, False, STAGES)
    for i in gl.static_range(0, UNROLL - 2, 2):
        # acc goes through each wait too: it pins the previous rescale before the wait (else LLVM sinks it below
        # the last wait(0), where nothing overlaps it: seen in the SASS)
        pa, acc = warpgroup_mma_wait(1, deps=(pa, acc))
        acc = _retire(pa, base, g + i, acc, s_rows, mask_m, ring, STAGES)
        pa = _issue(base + g + i + 2, a_bufs, w_bufs, bars, pa, False, STAGES)
        pb, acc = warpgroup_mma_wait(1, deps=(pb, acc))
        acc = _retire(pb, base, g + i + 1, acc, s_rows, mask_m, ring, STAGES)
        pb = _issue(base + g + i + 3, a_bufs, w_bufs, bars, pb, False, STAGES)
    pa, acc = warpgroup_mma_wait(1, deps=(pa, acc))
    acc = _retire(pa, base, g + UNROLL - 2, acc, s_rows, mask_m, ring, STAGES)
    pb, acc = warpgroup_mma_wait(0, deps=(pb, acc))
    acc = _retire(pb, base, g + UNROLL - 1, acc, s_rows, mask_m, ring, STAGES)
    return acc, pa, pb


@gluon.jit
def _gluon_qlinear_kernel(a_desc, w_desc, c_desc, s_ptr, ws_ptr, bias_ptr, M, N, K, stride_sm,
                          PER_TOKEN: gl.constexpr, HAS_BIAS: gl.constexpr, UNROLL: gl.constexpr,
                          GROUP_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr):
    """Persistent: the grid is at most one program per SM; program ``pid`` takes tiles pid, pid + nprog, ... and
    its operand ring runs on across them (``_load``), so a tile's prologue loads were issued during the previous
    tile's K loop and its output's TMA store overlaps the next tile."""
    BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
    BK: gl.constexpr = a_desc.block_type.shape[1]
    BLOCK_N: gl.constexpr = w_desc.block_type.shape[0]
    # warps stacked along M (16 rows per warp, 64 per warpgroup); one instruction spans the tile's width
    layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                     instr_shape=[16, BLOCK_N, 32])
    pid, nprog, grid_m, grid_n, my_tiles, n_steps = _schedule(M, N, K, BLOCK_M, BLOCK_N, BK)
    total = my_tiles * n_steps

    a_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_M, BK], a_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, BK], w_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    c_smem = gl.allocate_shared_memory(c_desc.dtype, c_desc.block_type.shape, c_desc.layout)
    for i in gl.static_range(STAGES):
        mbarrier.init(bars.index(i), count=1)
    off_m, off_n = _tile(0, pid, nprog, grid_m, grid_n, BLOCK_M, BLOCK_N, GROUP_M)
    for i in gl.static_range(STAGES):   # the first tile's first STAGES steps (n_steps >= STAGES)
        _load(i, off_m, off_n, i < total, i, a_desc, w_desc, a_bufs, w_bufs, bars, STAGES)

    for t in range(0, my_tiles):
        nxt_m, nxt_n = _tile(t + 1, pid, nprog, grid_m, grid_n, BLOCK_M, BLOCK_N, GROUP_M)
        ring = (total, n_steps, off_m, off_n, nxt_m, nxt_n, a_desc, w_desc, a_bufs, w_bufs, bars)
        # 32-bit row offsets (M · K/128 scales stay far below 2^31; fewer live registers)
        offs_m = off_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
        offs_n = off_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        mask_m = offs_m < M
        mask_n = offs_n < N
        s_rows = s_ptr + offs_m * stride_sm
        base = t * n_steps
        if PER_TOKEN:
            # one int32 accumulator over all of K, one wgmma in flight (same-accumulator wgmmas chain in hardware)
            p = gl.zeros((BLOCK_M, BLOCK_N), gl.int32, layout)
            p = _issue(base, a_bufs, w_bufs, bars, p, False, STAGES)
            p = warpgroup_mma_wait(1, deps=(p, ))   # nothing older in flight: makes p a tensor for the loop
            for k in range(1, n_steps):
                p = _issue(base + k, a_bufs, w_bufs, bars, p, True, STAGES)
                p = warpgroup_mma_wait(1, deps=(p, ))
                _refill(base + k - 1, k - 1, ring, STAGES)    # step k − 1's wgmma is complete
            p = warpgroup_mma_wait(0, deps=(p, ))
            _refill(base + n_steps - 1, n_steps - 1, ring, STAGES)
            s = gl.load(s_rows, mask=mask_m, other=0.0)
            acc = p.to(gl.float32) * s[:, None]
        else:
            acc = gl.zeros((BLOCK_M, BLOCK_N), gl.float32, layout)
            pa = gl.zeros((BLOCK_M, BLOCK_N), gl.int32, layout)
            pb = gl.zeros((BLOCK_M, BLOCK_N), gl.int32, layout)
            for g in range(0, n_steps, UNROLL):    # UNROLL divides the number of groups (unroll_for)
                acc, pa, pb = _groups(base, g, UNROLL, acc, pa, pb, s_rows, mask_m, ring, STAGES)

        # epilogue, in tl_common.scale_bias's order: acc · Δ[n] (+ float32(bias[n])); out through shared memory
        # and a TMA store (it clips the ragged edges: no masks, one bulk copy instead of a store per element pair),
        # left in flight while the next tile runs
        ws = gl.load(ws_ptr + offs_n, mask=mask_n, other=0.0)
        acc = acc * ws[None, :]
        if HAS_BIAS:
            b = gl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(gl.float32)
            acc = acc + b[None, :]
        tma.store_wait(pendings=0)      # the previous tile's store has read c_smem
        c_smem.store(acc.to(c_desc.dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
        off_m, off_n = nxt_m, nxt_n
    tma.store_wait(pendings=0)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(i))


# ----------------------------------------------------------------------------------------------------------------
# host side

_GL_DTYPE = {torch.int8: gl.int8, torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float32: gl.float32}
_SIG_DTYPE = {torch.int8: "i8", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def smem_layout(rows: int, cols: int = BLOCK_K, dtype: torch.dtype = torch.int8):
    """The NVMMA shared layout of a [rows, cols] TMA box (the widest swizzle that fits)."""
    return gl.NVMMASharedLayout.get_default_for([rows, cols], _GL_DTYPE[dtype])


def desc_type(rows: int, cols: int = BLOCK_K, dtype: torch.dtype = torch.int8) -> str:
    """The kernel signature's type of a TMA descriptor argument (for offline compiles: kernels/aot.py)."""
    return f"tensordesc<{_SIG_DTYPE[dtype]}[{rows}, {cols}],{smem_layout(rows, cols, dtype)!r}>"


def supported(k: int, ga: int, expanded: bool, n: int = 0, out_dtype: torch.dtype = torch.bfloat16) -> str | None:
    """Why this kernel cannot run a call (None: it can): int8-expanded weights, K a multiple of 128, group 128
    with an even number of groups, or per-token; an output TMA can address (16-byte rows: N·e a multiple of 16)."""
    if out_dtype not in _GL_DTYPE or out_dtype == torch.int8:
        return f"output dtype {out_dtype}: only bf16, fp16, fp32"
    if n * out_dtype.itemsize % 16:
        return f"N={n} rows of {out_dtype} are not a multiple of 16 bytes (the TMA store)"
    if not expanded:
        return "needs int8-expanded weights (kernels/expand.py)"
    if k % BLOCK_K:
        return f"K={k} is not a multiple of {BLOCK_K}"
    if ga != k and ga != BLOCK_K:
        return f"activation group {ga}: only {BLOCK_K} or per-token (K)"
    if ga == BLOCK_K and (k // BLOCK_K) % 2:
        return f"K={k} has an odd number of 128-groups (the group loop runs two at a time)"
    if k < STAGES_MAX * BLOCK_K:
        return f"K={k} < {STAGES_MAX * BLOCK_K}: fewer K steps than the operand ring's slots (a slot refill reaches " \
               "at most one tile ahead)"
    return None


def use_gluon() -> bool:
    """Opt-in (``DVDQ_GLUON=1``) until a GPU has measured it; the Triton kernel stays the default."""
    return os.environ.get("DVDQ_GLUON", "0") == "1" and torch.cuda.is_available()


def offline_spec(tile: tuple) -> tuple[dict, dict]:
    """(signature, constexprs) of the kernel at ``tile`` = (BLOCK_M, BLOCK_N, warps, stages, groups per iteration;
    1: per-token) for an offline sm_90 compile (kernels/aot.py: tests/kernels/aot_sm90.py, bench/sass.py)."""
    bm, bn, warps, stages, unroll = tile
    sig = {"a_desc": desc_type(bm), "w_desc": desc_type(bn), "c_desc": desc_type(bm, bn, torch.bfloat16),
           "s_ptr": "*fp32", "ws_ptr": "*fp32", "bias_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
           "stride_sm": "i32"}
    const = dict(PER_TOKEN=unroll == 1, HAS_BIAS=True, UNROLL=unroll, GROUP_M=8, STAGES=stages, num_warps=warps)
    return sig, const


def sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def unroll_for(n_groups: int) -> int:
    """Groups per loop iteration for ``n_groups`` (even): the largest of :data:`UNROLLS` that divides it."""
    return next(u for u in UNROLLS if n_groups % u == 0)


def gluon_qlinear(a: torch.Tensor, s: torch.Tensor, w: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor | None,
                  out: torch.Tensor, per_token: bool, tile: tuple | None = None) -> torch.Tensor:
    """``out`` [M, N] = the W4A8 GEMM of int8 codes ``a`` [M, K] with fp32 scales ``s`` [M, K/128] (per-token
    [M, 1]) and int8-expanded weights ``w`` [N, K], Δ ``ws`` [N] fp32, optional ``bias`` [N]. ``tile``: one of
    the per-token :data:`TILES` (benchmarks and tests; default :data:`PER_TOKEN_TILE`). CUDA only; the caller
    checks :func:`supported`."""
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    if tile is not None and (tile not in TILES or (tile[4] == 1) != per_token):
        raise ValueError(f"tile {tile}: one of {[t for t in TILES if (t[4] == 1) == per_token]}")
    bm, bn, warps, stages, unroll = tile or (PER_TOKEN_TILE if per_token else
                                             (*GROUPED_TILES[0][:4], unroll_for(a.shape[1] // BLOCK_K)))
    m, k = a.shape
    n = w.shape[0]
    a_desc = TensorDescriptor.from_tensor(a, [bm, BLOCK_K], smem_layout(bm))
    w_desc = TensorDescriptor.from_tensor(w, [bn, BLOCK_K], smem_layout(bn))
    c_desc = TensorDescriptor.from_tensor(out, [bm, bn], smem_layout(bm, bn, out.dtype))
    grid = (min(triton.cdiv(m, bm) * triton.cdiv(n, bn), sms(a.device)),)   # persistent: one program per SM
    _gluon_qlinear_kernel[grid](a_desc, w_desc, c_desc, s, ws, bias if bias is not None else ws, m, n, k,
                                s.stride(0), PER_TOKEN=unroll == 1, HAS_BIAS=bias is not None, UNROLL=unroll,
                                GROUP_M=8, STAGES=stages, num_warps=warps)
    return out
