"""Static performance model of a Hopper kernel from its SASS: what the instruction stream of the hot loop allows.

Input: the ``cuobjdump -sass`` listing of a kernel compiled for sm_90 (:mod:`.aot`) and its resources. Output, for
the innermost loop that holds the tensor-core instructions (the GEMM's K loop) or, without one, for the whole
kernel: instruction counts by class, the ``wgmma`` wait depth, and cycles per loop iteration from four bounds:

- **MMA**: MACs of the ``GMMA`` instructions / the SM's tensor rate (int8 4096, 16-bit 2048 MAC/clk/SM dense);
- **shared memory**: bytes the ``GMMA``\\ s read from shared memory (A when it is a descriptor, B always) / 128 B/clk;
- **issue**: per SM sub-partition (4 per SM, one warp instruction dispatched per clock), the larger of the dispatch
  count and the busiest pipe (:data:`PIPE_CYCLES`: the 16-lane INT and FMA-heavy pipes take 2 clocks per warp
  instruction, the XU conversions / MUFU 8);
- **serialization**: when the loop waits its ``wgmma``\\ s to depth 0, the instructions issued with no wgmma in
  flight (after that wait, before the next wgmma: all of them in a Triton int8 loop, only an iteration's last
  rescale in the Gluon kernel) add to the MMA time within a CTA. Other CTAs on the SM could hide that (``1/ctas`` if they overlapped perfectly); measured on an H200
  (``bench/results/sass_vs_h200.md``) two co-resident 4-warp CTAs hid none of it: with full overlap the model was
  2.6-3.4x optimistic at those tiles and ranked them first, without it 1.4-1.8x, near the 1-CTA tiles' 1.2-1.4x. So
  :data:`CTA_OVERLAP` = 0: ``serial = (mma + exposed issue) / (1 + CTA_OVERLAP·(ctas − 1))``.

``cycles = max(mma, smem, issue, serial if serialized)``; ``fraction of peak = mma_useful / cycles``. A
warp-specialized kernel (two consumer warpgroups taking alternate tiles, a loader warp) is modelled per output tile
from its three partitions' code instead (:func:`pingpong_parts`, :func:`pingpong_cycles`).
It is a model: latency, bank conflicts, L2 and TMA behaviour are not in it; what it is good for is comparing the
code of two kernel versions on the same terms, without a GPU. The constants are H100 SXM5's (NVIDIA's published
peak: 1979 dense int8 TOPS at 132 SMs and 1830 MHz; CUDA programming guide, arithmetic throughput of cc 9.0).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

# ---- H100 SXM5 (the H200 differs only in HBM: 4.8 TB/s)
SMS = 132
CLOCK_HZ = 1.83e9
MAC_PER_CLK = {"int8": 4096, "fp16": 2048}
SMEM_BYTES_PER_CLK = 128
SMSP = 4
REGS_PER_SM = 65536
SMEM_PER_SM = 233472       # 228 KiB, of which 1 KiB per CTA is reserved
WARPS_PER_SM = 64
CTAS_PER_SM = 32
HBM = {"H100 SXM": 3.35e12, "H200": 4.8e12}
CTA_OVERLAP = 0.0          # share of a co-resident CTA's serialized MMA + issue time that another CTA hides (measured)
# L2 → shared memory, bytes/s: what a persistent grid read from an L2-resident buffer on the H200 (bench/l2_probe.py,
# bench/results/l2_probe_h200.md: 9.33-9.43 TB/s at 2-4 CTAs per SM, 8 MB). A bound of each GEMM's estimate
# (bench/sass.py); the Triton per-token loop at 128x128 had pulled 7.3 TB/s of it (first_window_h200.md)
L2_MEASURED = 9.4e12

# instruction classes (by SASS opcode, before the first '.')
CLASSES = {
    "mma": ("IGMMA", "HGMMA", "QGMMA", "IMMA", "HMMA"),
    "sync": ("BAR", "MEMBAR", "FENCE", "WARPGROUP", "DEPBAR", "LDGDEPBAR", "SYNCS", "ARRIVES", "WARPSYNC",
             "ERRBAR", "CCTL"),
    "memory": ("LDG", "STG", "LDS", "STS", "LDSM", "STSM", "LDGSTS", "UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP",
               "LDL", "STL", "ATOM", "ATOMS", "RED", "LD", "ST"),
    "convert": ("I2F", "F2I", "I2FP", "F2FP", "F2F", "I2I", "FRND", "I2IP"),
    "float": ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP", "HFMA2", "HMUL2", "HADD2", "MUFU", "FCHK", "FSWZADD",
              "DADD", "DFMA", "DMUL"),
    "unpack": ("LOP3", "SHF", "PRMT", "BFE", "BFI", "BMSK", "SGXT", "POPC", "FLO", "BREV"),
    "control": ("BRA", "EXIT", "NOP", "BSSY", "BSYNC", "CALL", "RET", "YIELD", "BPT"),
}
_CLASS_OF = {op: c for c, ops in CLASSES.items() for op in ops}

# clocks one warp instruction occupies its pipe in an SM sub-partition (sm_90: 32 FP32 lanes, 16 INT32 lanes,
# 16 FMA-heavy lanes for IMAD, 4 XU lanes for conversions and MUFU). Opcodes not listed: 1.
PIPE_CYCLES = {
    "alu": (2, ("LOP3", "SHF", "PRMT", "IADD3", "ISETP", "SEL", "LEA", "IMNMX", "VIMNMX", "IABS", "BMSK", "SGXT",
                "PLOP3", "P2R", "R2P", "FSEL", "FSETP", "FMNMX", "I2FP", "LEA.HI", "VIADD", "FLO", "POPC")),
    "fma_heavy": (2, ("IMAD", "IMAD.WIDE", "IMUL")),
    "xu": (8, ("MUFU", "I2F", "F2I", "F2F", "FRND", "I2I", "F2FP")),
    "lsu": (1, ("LDG", "STG", "LDS", "STS", "LDSM", "STSM", "LDGSTS", "LDL", "STL", "ATOM", "RED")),
}
_PIPE_OF = {op: (p, c) for p, (c, ops) in PIPE_CYCLES.items() for op in ops}

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
_GMMA = re.compile(r"([IHQ])GMMA\.(\d+)x(\d+)x(\d+)\.(\w+)")


@dataclass
class Instr:
    addr: int
    pred: str
    op: str        # full opcode with modifiers, e.g. IGMMA.64x128x32.S8.S8
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]

    @property
    def uniform(self) -> bool:  # uniform datapath (U*): its own issue port, not the vector pipes
        return self.base.startswith("U") and self.base not in ("UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP")


def parse(sass: str) -> list[Instr]:
    """The instructions of the (first) function in a ``cuobjdump -sass`` listing, in address order."""
    out = []
    for m in _LINE.finditer(sass):
        out.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3), m.group(4).strip()))
    return out


def loops(instrs: list[Instr]) -> list[tuple[int, int]]:
    """``(first, last)`` index ranges of the loops: a branch back to an earlier address closes one."""
    index = {ins.addr: i for i, ins in enumerate(instrs)}
    out = []
    for i, ins in enumerate(instrs):
        if ins.base == "BRA":
            m = re.match(r"(?:`\()?\.?L?_?x?_?(0x[0-9a-f]+)", ins.args) or re.search(r"(0x[0-9a-f]+)", ins.args)
            if m:
                target = int(m.group(1), 16)
                if target < ins.addr and target in index:
                    out.append((index[target], i))
    # an out-of-line retry block after the EXIT (an mbarrier try-wait's) branches back into the code: not a loop
    exits = [i for i, ins in enumerate(instrs) if ins.base == "EXIT"]
    return [(a, b) for a, b in out if not any(a < e < b for e in exits)]


def hot_loop(instrs: list[Instr]) -> tuple[int, int] | None:
    """The innermost loop holding tensor-core instructions, else the largest loop, else None (straight-line)."""
    ls = loops(instrs)
    if not ls:
        return None
    with_mma = [(a, b) for a, b in ls if any(_class(instrs[j]) == "mma" for j in range(a, b + 1))]
    if with_mma:
        return min(with_mma, key=lambda r: r[1] - r[0])
    return max(ls, key=lambda r: r[1] - r[0])


def enclosing_loop(instrs: list[Instr], inner: tuple[int, int]) -> tuple[int, int] | None:
    """The smallest loop strictly containing the loop ``inner`` (a persistent kernel's tile loop around its K loop),
    else None."""
    outer = [(a, b) for a, b in loops(instrs) if a <= inner[0] and inner[1] <= b and (a, b) != inner]
    return min(outer, key=lambda r: r[1] - r[0]) if outer else None


def _class(ins: Instr) -> str:
    if ins.uniform:
        return "uniform"
    c = _CLASS_OF.get(ins.base)
    if c:
        return c
    return "address"   # IMAD, IADD3, LEA, ISETP, SEL, MOV, ...: integer work that is not bit unpacking


def _pipe(ins: Instr):
    if ins.uniform:
        return None, 0
    for key in (".".join(ins.op.split(".")[:2]), ins.base):   # "IMAD.WIDE" before "IMAD"
        if key in _PIPE_OF:
            return _PIPE_OF[key]
    if ins.base in ("FFMA", "FMUL", "FADD", "HFMA2", "HMUL2", "HADD2", "MOV"):
        return "fma", 1
    return None, 1


@dataclass
class LoopStats:
    """Counts per thread for one iteration of the hot loop (or the whole kernel when ``loop`` is False)."""
    loop: bool
    instructions: int
    by_class: dict = field(default_factory=dict)
    pipe_cycles: dict = field(default_factory=dict)     # per warp, clocks each pipe is busy
    macs: dict = field(default_factory=dict)   # per warpgroup, by operand type ("int8", "fp16")
    smem_bytes: int = 0
    wait_depth: int | None = None    # min pending wgmma groups allowed at a wait in the loop; None: no wait
    gmma: list = field(default_factory=list)
    local_mem: int = 0           # LDL/STL in the loop (spills)
    # the instructions issued while no wgmma is in flight (after a wait to depth 0, before the next wgmma): what
    # cannot overlap the tensor core (non-uniform count and pipe clocks per warp, as above)
    exposed_instructions: int = 0
    exposed_pipe_cycles: dict = field(default_factory=dict)


def loop_stats(instrs: list[Instr]) -> LoopStats:
    """Counts for one iteration of the hot loop (:func:`hot_loop`), or the whole listing without one."""
    rng = hot_loop(instrs)
    return block_stats(instrs[rng[0]:rng[1] + 1] if rng else instrs, rng is not None)


def block_stats(body: list[Instr], loop: bool = False) -> LoopStats:
    """Counts for one pass over the instructions ``body`` (a loop body or a straight region)."""
    st = LoopStats(loop=loop, instructions=len(body))
    waits = []
    in_flight = False            # a loop with a wait to depth 0 drains every wgmma once per iteration
    for ins in body:
        c = _class(ins)
        st.by_class[c] = st.by_class.get(c, 0) + 1
        pipe, cyc = _pipe(ins)
        if pipe:
            st.pipe_cycles[pipe] = st.pipe_cycles.get(pipe, 0) + cyc
        if not in_flight and not ins.uniform:
            st.exposed_instructions += 1
            if pipe:
                st.exposed_pipe_cycles[pipe] = st.exposed_pipe_cycles.get(pipe, 0) + cyc
        if ins.base in ("LDL", "STL"):
            st.local_mem += 1
        m = _GMMA.match(ins.op)
        if m:
            in_flight = True
            kind, mm, nn, kk, _ = m.groups()
            mm, nn, kk = int(mm), int(nn), int(kk)
            st.gmma.append((mm, nn, kk))
            dt = "int8" if kind in "IQ" else "fp16"
            esz = 1 if kind in "IQ" else 2
            st.macs[dt] = st.macs.get(dt, 0) + mm * nn * kk
            a_smem = "gdesc" in ins.args.split(",")[1] if ins.args.count(",") >= 1 else True
            st.smem_bytes += (mm * kk * esz if a_smem else 0) + nn * kk * esz
        if ins.op.startswith("WARPGROUP.DEPBAR"):
            m2 = re.search(r"0x([0-9a-f]+)", ins.args)
            waits.append(int(m2.group(1), 16) if m2 else 0)
            in_flight = waits[-1] > 0
    st.wait_depth = min(waits) if waits else None
    return st


def occupancy(regs: int, shared: int, warps: int) -> int:
    """CTAs per SM from registers (allocated per warp in units of 256), shared memory and warps."""
    per_warp = math.ceil(max(regs, 1) * 32 / 256) * 256
    by_regs = REGS_PER_SM // (per_warp * warps)
    by_smem = SMEM_PER_SM // (shared + 1024) if shared else CTAS_PER_SM
    by_warps = WARPS_PER_SM // warps
    return max(0, min(by_regs, by_smem, by_warps, CTAS_PER_SM))


def serial_cycles(mma: float, issue: float, ctas: int) -> float:
    """SM cycles per CTA iteration when each CTA waits for its wgmmas before its other work (module docstring)."""
    return (mma + issue) / (1.0 + CTA_OVERLAP * (max(ctas, 1) - 1))


def tile_cycles(st: LoopStats, warps: int, ctas: int, useful_macs: int = 0) -> dict:
    """SM cycles per loop iteration of one CTA (the SM's throughput: other CTAs share it), from the four bounds of
    the module docstring; ``fraction``: the int8 tensor time of ``useful_macs`` over those cycles."""
    wgs = max(warps // 4, 1)          # the SASS of one thread shows its warpgroup's instructions
    mma = sum(v * wgs / MAC_PER_CLK[dt] for dt, v in st.macs.items())
    smem = st.smem_bytes * wgs / SMEM_BYTES_PER_CLK
    warps_per_smsp = warps / SMSP

    def issue_of(instructions, pipe_cycles):
        return max(instructions * warps_per_smsp, max(pipe_cycles.values(), default=0) * warps_per_smsp)

    issue = issue_of(st.instructions - st.by_class.get("uniform", 0), st.pipe_cycles)
    exposed = issue_of(st.exposed_instructions, st.exposed_pipe_cycles)
    return combine(mma, smem, issue, st.wait_depth == 0, ctas, useful_macs / MAC_PER_CLK["int8"], exposed)


def combine(mma: float, smem: float, issue: float, serialized: bool, ctas: int, useful: float,
            exposed: float | None = None) -> dict:
    """The bounds (cycles per CTA loop iteration) as the model combines them: the largest one, which one it is, and
    ``useful`` (int8 tensor clocks of the useful MACs) over it. ``exposed``: the issue cycles of the instructions
    that run while no wgmma is in flight (None: all of ``issue``, as when every wgmma is waited at once)."""
    bounds = {"mma": mma, "smem": smem, "issue": issue}
    if serialized:
        bounds["serial"] = serial_cycles(mma, issue if exposed is None else exposed, ctas)
    cycles = max(bounds.values())
    out = {"cycles": cycles, "bound": max(bounds, key=bounds.get), "fraction": useful / cycles if cycles else 0.0,
           **{f"{k}_cycles": v for k, v in bounds.items()}}
    if serialized and exposed is not None:
        out["exposed_cycles"] = exposed
    return out


def warp_issue(st: LoopStats) -> float:
    """Clocks one warp's pass over ``st`` occupies its SM sub-partition: the larger of its non-uniform dispatches and
    its busiest pipe (module docstring)."""
    return max(st.instructions - st.by_class.get("uniform", 0), max(st.pipe_cycles.values(), default=0))


def pingpong_cycles(loop: LoopStats, iters: float, epi: LoopStats, loader: LoopStats, steps: int,
                    useful_macs: int, coop: bool = False) -> dict:
    """SM cycles per consumer tile of a warp-specialized kernel (``kernels/gluon_ws.py``): two consumer
    warpgroups (one warp per SM sub-partition each) each run ``iters`` iterations of a K loop ``loop`` then an
    epilogue ``epi`` per tile; a loader warp runs ``loader`` (one K step) ``steps`` times per CTA tile. Ping-pong:
    the consumers take alternate tiles. Cooperative (``coop``): they share every CTA tile (half its rows each, one
    load feeding both). The bounds, per consumer tile:

    - **tensor**: the K loop's wgmmas and the epilogue's (int8 and 16-bit at their rates), one tensor core;
    - **shared memory**: the bytes those wgmmas read;
    - **issue**: per sub-partition, one consumer warp's K loop and epilogue (the other consumer's tile costs the
      same), plus the loader warp's steps on the sub-partition it shares (half of them when cooperative);
    - **chain**: ping-pong, one consumer's own tile, its K loop (each iteration as :func:`combine` bounds it for one
      warpgroup, its last rescale exposed where it waits to depth 0) then its epilogue, which waits on its own
      rotation wgmma (its issue plus that MMA): two consumers in flight, so half of it per tile. Cooperative, the
      two consumers run their K loops side by side (an iteration: both warpgroups' wgmmas, or one's own chain)
      and then their epilogues side by side, while the tensor core waits: half of that per consumer tile.

    ``fraction``: the int8 tensor time of ``useful_macs`` over the largest bound."""
    def mma(st):
        return sum(v / MAC_PER_CLK[dt] for dt, v in st.macs.items())

    loads = steps / 2 if coop else steps
    tensor = iters * mma(loop) + mma(epi)
    smem = (iters * loop.smem_bytes + epi.smem_bytes) / SMEM_BYTES_PER_CLK
    dispatch = {}
    for st, times in ((loop, iters), (epi, 1), (loader, loads)):
        for pipe, cyc in st.pipe_cycles.items():
            dispatch[pipe] = dispatch.get(pipe, 0) + times * cyc
    slots = sum(times * (st.instructions - st.by_class.get("uniform", 0))
                for st, times in ((loop, iters), (epi, 1), (loader, loads)))
    issue = max(slots, max(dispatch.values(), default=0))
    exposed = warp_issue(LoopStats(loop=True, instructions=loop.exposed_instructions,
                                   pipe_cycles=loop.exposed_pipe_cycles))
    per_iter = combine(mma(loop), loop.smem_bytes / SMEM_BYTES_PER_CLK, warp_issue(loop), loop.wait_depth == 0, 1,
                       0.0, exposed)["cycles"]
    if coop:
        k_phase = iters * max(2 * mma(loop), 2 * warp_issue(loop), per_iter)
        epi_phase = max(2 * warp_issue(epi), warp_issue(epi) + mma(epi), 2 * mma(epi))
        chain = (k_phase + epi_phase) / 2
    else:
        chain = (iters * per_iter + warp_issue(epi) + mma(epi)) / 2
    bounds = {"mma": tensor, "smem": smem, "issue": issue, "chain": chain}
    cycles = max(bounds.values())
    return {"cycles": cycles, "bound": max(bounds, key=bounds.get),
            "fraction": useful_macs / MAC_PER_CLK["int8"] / cycles if cycles else 0.0,
            **{f"{k}_cycles": v for k, v in bounds.items()}}


def pingpong_ranges(instrs: list[Instr]) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Index ranges (K loop, tile loop, loader step) in a warp-specialized kernel's listing: the first consumer's K
    loop (the innermost loop holding wgmmas; the two consumers' copies are the same code), its tile loop (the
    smallest loop around it), and the innermost loop that issues TMA loads and no wgmma (the loader's K step)."""
    hot = hot_loop(instrs)
    outer = enclosing_loop(instrs, hot) if hot else None
    if not outer:
        raise ValueError("no K loop inside a tile loop: not a persistent warp-specialized GEMM")
    tma = [(a, b) for a, b in loops(instrs) if any(i.base == "UTMALDG" for i in instrs[a:b + 1])
           and not any(_class(i) == "mma" for i in instrs[a:b + 1])]
    if not tma:
        raise ValueError("no loop issuing TMA loads without wgmmas: no loader partition")
    return hot, outer, min(tma, key=lambda r: r[1] - r[0])


def pingpong_parts(instrs: list[Instr]) -> tuple[LoopStats, LoopStats, LoopStats]:
    """(K loop, epilogue, loader step) stats of a warp-specialized kernel (:func:`pingpong_ranges`): the epilogue is
    the rest of the tile loop around the K loop (with the tile's set-up and any K step peeled out of the loop)."""
    hot, outer, ld = pingpong_ranges(instrs)
    return (block_stats(instrs[hot[0]:hot[1] + 1], True),
            block_stats(instrs[outer[0]:hot[0]] + instrs[hot[1] + 1:outer[1] + 1]),
            block_stats(instrs[ld[0]:ld[1] + 1], True))


def registers_named(instrs: list[Instr]) -> int:
    """1 + the highest general register any of ``instrs`` names (2 for a 64-bit pair): the registers that code needs
    (in a warp-specialized kernel the launch's count is not any partition's: ``setmaxnreg`` moves them)."""
    named = [int(r) + (2 if wide else 1) for i in instrs for r, wide in re.findall(r"\bR(\d+)\b(\.64)?", i.args)]
    return max(named, default=0)
