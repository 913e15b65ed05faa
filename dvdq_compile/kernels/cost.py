"""Cost model: FLOPs and bytes per kernel as sympy expressions of M, N, K (dynamic dims stay symbolic).

Counts follow the Triton tutorials' convention: FLOPs = 2 per multiply-add; bytes = each operand read once from
HBM and each result written once (tile re-reads are assumed to hit L2, except where a variant inherently re-reads,
stated per function). Pass ints to get numbers, symbols (``M``, ``N``, ``K`` below, or a SymInt's sympy expr) to
keep them symbolic; :func:`evaluate` substitutes values.

Used by ``bench/kernels.py`` (TOPS, GB/s, roofline) and quoted in the kernel docstrings.
"""
from __future__ import annotations

import sympy

from ..quant.pack import codes_per_byte

M, N, K = sympy.symbols("M N K", positive=True, integer=True)

ELEM = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1}


def _sz(dtype) -> int:
    return ELEM[str(dtype).replace("torch.", "")] if not isinstance(dtype, int) else dtype


def _stored_bits(wbits: int) -> int:
    """Bits stored per weight code in the kernel layout (:func:`quant.pack.codes_per_byte`: 4 for 3/4-bit nibbles,
    8 for bytes)."""
    return 8 // codes_per_byte(wbits)


def act_quant_cost(m=M, k=K, group: int = 128, rotate: int = 128, in_dtype="bfloat16") -> dict:
    """Rotate + quantize: ``2·M·K·r`` Hadamard FLOPs + ~4 elementwise ops/element; bytes ``e·M·K`` in,
    ``M·K`` codes + ``4·M·K/g`` scales out (per-token scale: g = K, and a second read of x when the row does not
    stay in cache — counted, the kernel re-reads the row)."""
    e = _sz(in_dtype)
    per_token = group is None or group == k
    g = k if per_token else group
    flops = 2 * m * k * rotate * (2 if per_token else 1) + 4 * m * k
    reads = e * m * k * (2 if per_token else 1)
    return {"flops": sympy.sympify(flops), "bytes": sympy.sympify(reads + m * k + 4 * m * k / g)}


def qlinear_cost(m=M, n=N, k=K, group: int = 128, wbits: int = 4, out_dtype="bfloat16", bias: bool = True) -> dict:
    """Integer GEMM + dequant epilogue: ``2·M·N·K`` int8 MACs + ``2·M·N·K/g`` promotion FLOPs; bytes: codes
    ``M·K``, scales ``4·M·K/g``, packed weight ``N·K·b/8`` (b = 4 for the nibble layout), ``8·N`` (Δ, z),
    ``e_out·N`` bias, ``e_out·M·N`` output."""
    eo = _sz(out_dtype)
    g = k if group is None else group
    wb = _stored_bits(wbits)
    flops = 2 * m * n * k + 2 * m * n * k / g + 2 * m * n
    by = m * k + 4 * m * k / g + n * k * wb / 8 + 8 * n + (eo * n if bias else 0) + eo * m * n
    return {"flops": sympy.sympify(flops), "int_ops": sympy.sympify(2 * m * n * k), "bytes": sympy.sympify(by)}


def fused_qlinear_cost(m=M, n=N, k=K, group: int = 128, rotate: int = 128, wbits: int = 4, in_dtype="bfloat16",
                       block_n: int = 128, bias: bool = True) -> dict:
    """One launch: the GEMM of :func:`qlinear_cost` plus the prologue done by each of ``⌈N/BN⌉`` N-tiles
    (rotation ``2·M·K·r`` per tile, doubled for per-token scales); HBM bytes: ``e·M·K`` activations (re-reads of
    the ``⌈N/BN⌉`` tiles come from L2), weights, output — no code/scale round trip."""
    e = _sz(in_dtype)
    eo = e
    per_token = group is None or group == k
    g = k if per_token else group
    tiles = sympy.ceiling(sympy.sympify(n) / block_n)
    wb = _stored_bits(wbits)
    prologue = (2 * m * k * rotate * (2 if per_token else 1) + 4 * m * k) * tiles
    flops = 2 * m * n * k + 2 * m * n * k / g + 2 * m * n + prologue
    by = e * m * k + n * k * wb / 8 + 8 * n + (eo * n if bias else 0) + eo * m * n
    return {"flops": sympy.sympify(flops), "int_ops": sympy.sympify(2 * m * n * k), "bytes": sympy.sympify(by),
            "prologue_flops": sympy.sympify(prologue)}


def evaluate(expr, **values) -> float:
    """Substitute ``M=…, N=…, K=…`` and return a float. (``group=None`` in the cost functions: per-token.)"""
    subs = {sympy.Symbol(name, positive=True, integer=True): v for name, v in values.items()}
    return float(sympy.sympify(expr).subs(subs))


def roofline_seconds(cost: dict, peak_ops: float, bandwidth: float, **values) -> float:
    """max(compute time, memory time) for ``cost`` at ``peak_ops`` ops/s and ``bandwidth`` B/s."""
    ops = evaluate(cost.get("int_ops", cost["flops"]), **values)
    by = evaluate(cost["bytes"], **values)
    return max(ops / peak_ops, by / bandwidth)


def gemm_cycles(m=M, n=N, k=K, *, cycles_per_iter: float, block_m: int, block_n: int, k_iter: int,
                ctas_per_sm: int = 1, sms: int = 132, outside: float = 0.0) -> sympy.Expr:
    """SM cycles of a tiled GEMM from its hot loop: ``waves · ctas · (K / k_iter · cycles_per_iter + outside)``.

    ``cycles_per_iter`` is the SM throughput per CTA loop iteration from the static instrument
    (``kernels/sass_model.tile_cycles``: the max of the MMA, shared-memory, issue-slot and serialization bounds),
    ``outside`` the per-tile cycles outside the loop; waves are ``⌈tiles / (sms · ctas)⌉``. Divide by the clock for
    seconds. Symbolic in M, N, K like the byte and FLOP counts above."""
    tiles = sympy.ceiling(sympy.sympify(m) / block_m) * sympy.ceiling(sympy.sympify(n) / block_n)
    waves = sympy.ceiling(tiles / (sms * max(ctas_per_sm, 1)))
    return waves * max(ctas_per_sm, 1) * (sympy.sympify(k) / k_iter * cycles_per_iter + outside)
