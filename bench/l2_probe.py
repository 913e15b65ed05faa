"""How fast L2 feeds the SMs: the ceiling the static instrument bounds each GEMM by (``sass_model.L2_MEASURED``).

A persistent grid of CTAs sweeps an int32 buffer ``reps`` times, each CTA reading 16 KB blocks in a strided order
with ``.cg`` loads (cached in L2, not in L1, so every sweep after the first is served by L2 when the buffer fits
it). Reads per second = ``reps · bytes / time``. A buffer several times L2's size gives HBM's read rate instead,
the same kernel's other bound. The GEMM tiles' L2 → shared-memory rates in ``first_window.py`` are compared with
this number: a tile that needs more than it cannot run at its estimate.

    python bench/l2_probe.py           # on the GPU: prints a JSON of TB/s per buffer size
"""
from __future__ import annotations

import json
import sys

import torch
import triton
import triton.language as tl

BLOCK = 4096                       # int32 per block: 16 KB, 8 warps x 32 lanes x 16 elements
SIZES_MB = (8, 24, 40, 2048)       # inside L2 (50 MB on H100/H200, two partitions), near its size, HBM


@triton.jit
def _sweep(x_ptr, out_ptr, n_blocks, iters, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    grid = tl.num_programs(0)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for i in range(iters):
        # neighbouring CTAs read neighbouring blocks at the same time, as a GEMM's CTAs share weight strips
        b = (pid + i * grid) % n_blocks
        acc ^= tl.load(x_ptr + b.to(tl.int64) * BLOCK + offs, cache_modifier=".cg")
    tl.store(out_ptr + pid, tl.reduce(acc, 0, _xor))


@triton.jit
def _xor(a, b):
    return a ^ b


def sweep(x: torch.Tensor, reps: int, ctas: int) -> torch.Tensor:
    """One probe launch: ``ctas`` CTAs read ``x`` (int32, a multiple of BLOCK) ``reps`` times over. Returns the
    per-CTA XOR of what each read (so the loads cannot be dropped; ``xor_ref`` checks it)."""
    n_blocks = x.numel() // BLOCK
    if x.dtype != torch.int32 or x.numel() % BLOCK:
        raise ValueError(f"l2 probe: x must be int32 with a multiple of {BLOCK} elements, got {x.dtype} {x.numel()}")
    iters = -(-reps * n_blocks // ctas)
    out = torch.empty(ctas, dtype=torch.int32, device=x.device)
    _sweep[(ctas,)](x, out, n_blocks, iters, BLOCK=BLOCK, num_warps=8)
    return out


def xor_ref(x: torch.Tensor, reps: int, ctas: int) -> torch.Tensor:
    """The same reads in plain PyTorch: CTA p XORs blocks (p + i·ctas) mod n_blocks for i < iters."""
    blocks = x.view(-1, BLOCK)
    n_blocks = blocks.shape[0]
    iters = -(-reps * n_blocks // ctas)
    out = []
    for p in range(ctas):
        idx = (p + torch.arange(iters, device=x.device) * ctas) % n_blocks
        v = blocks[idx]
        r = torch.zeros(BLOCK, dtype=torch.int32, device=x.device)
        for row in v:
            r ^= row
        acc = r[0].clone()
        for e in r[1:]:
            acc ^= e
        out.append(acc)
    return torch.stack(out)


def measure(sizes_mb=SIZES_MB, reps_bytes=4 << 30) -> dict:
    """TB/s read per buffer size (each size swept ~``reps_bytes`` in all), at 1, 2, 4 and 8 CTAs per SM (8 CTAs of
    8 warps fill an SM: the most loads in flight)."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "triton": triton.__version__,
           "sms": sms, "block_bytes": BLOCK * 4, "rates_TB/s": {}}
    for mb in sizes_mb:
        x = torch.randint(-2**31, 2**31 - 1, (mb * 2**20 // 4,), dtype=torch.int32, device="cuda")
        reps = max(2, reps_bytes // x.nbytes)
        row = {}
        for per_sm in (1, 2, 4, 8):
            ctas = sms * per_sm
            n_blocks = x.numel() // BLOCK
            read = -(-reps * n_blocks // ctas) * ctas * BLOCK * 4
            ms = triton.testing.do_bench(lambda: sweep(x, reps, ctas), warmup=5, rep=30)
            row[f"{per_sm}_cta_per_sm"] = round(read / (ms * 1e-3) / 1e12, 2)
        res["rates_TB/s"][f"{mb}MB"] = row
        del x
    return res


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (tests/bench/test_l2_probe.py checks the kernel's reads on CPU)")
        return 0
    print(json.dumps(measure(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
