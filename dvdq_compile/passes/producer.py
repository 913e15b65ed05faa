"""Quantize an activation in the kernel that produces it: layer norm → adaLN modulation → cast → quantized linears,
and FFN-up linear → GELU → FFN-down linear.

Every video DiT in diffusers feeds q/k/v and the FFN from ``norm(x) * (1 + scale) + shift`` cast back to the
model's dtype (Wan, HunyuanVideo, LTX, CogVideoX; cross-attention from an affine layer norm). Quantized as written,
that is three passes over the activation: the norm writes 16-bit ``y``, ``act_quant`` reads it and writes codes, the
GEMM reads the codes. When every reader of ``y`` is a quantized linear, the rewrite instead emits one
``dvdq::norm_act_quant`` (``kernels/norm_quant.py``) that reads ``x`` and writes the codes (``quant/norm.py`` is its
specification), and erases the norm's nodes that nothing else reads.

:func:`match` recognises the pattern in a Dynamo graph (the spellings Dynamo records for these modules: method or
function ``mul``/``add`` in either operand order, ``to``/``type_as``/``float`` casts, ``F.layer_norm`` with or
without affine); :func:`assign` decides per layer and says why in the plan (the compile report shows it).

The FFN's inner activation ``a = gelu(up(x))`` is the widest of a block (N_up = 4-6x the model dim) and is written
twice and read twice before its codes exist. When the FFN-up is a quantized linear read only by the GELU and ``a``
only by the FFN-down, :func:`assign_gelu` moves the FFN-down's quantization into the FFN-up GEMM's epilogue: the
FFN-up plan gets ``epilogue`` (the FFN-down's name) and emits ``dvdq::qlinear_gelu_quant`` (``kernels/gelu_quant.py``)
whose codes the FFN-down reads; the FFN-up's own output, the GELU and the identity dropout leave the graph.

to_out's input is the attention output with its heads merged, ``sdpa(q, k, v).permute(0, 2, 1, 3).flatten(2, 3)``
cast to the model's dtype (diffusers' processors, native attention backend). When to_out is a quantized linear and
the only reader, :func:`assign_attention` (option ``fuse_attn``) replaces the chain with ``dvdq::attn_act_quant``
(``kernels/attn_quant.py``: the project's attention kernel, quantizing in its epilogue); the SDPA call and the
reshapes leave the graph.
"""
from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

_MUL = (operator.mul, torch.mul, torch.Tensor.mul)
_ADD = (operator.add, torch.add, torch.Tensor.add)
_CAST_METHODS = ("to", "type_as", "float", "half", "bfloat16")


@dataclass(frozen=True)
class NormModulate:
    """``(layer_norm(x.float(), eps) · mult + shift).to(out_dtype)`` found in the graph (nodes of Dynamo's graph;
    ``mult`` / ``shift`` may be None: a plain norm, or the norm's own affine weight and bias)."""
    x: fx.Node
    mult: fx.Node | None
    shift: fx.Node | None
    eps: float
    out_dtype: torch.dtype
    k: int


@dataclass(frozen=True)
class GeluOfLinear:
    """``a = dropout₀(gelu(y, approximate))`` found in the graph, ``y`` a linear's output node (the FFN-up);
    ``chain``: the GELU and identity-dropout nodes from ``y`` to ``a``, in order."""
    y: fx.Node
    chain: tuple
    approximate: str


_GELU = (F.gelu, torch._C._nn.gelu)
_SDPA = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)


@dataclass(frozen=True)
class AttentionOut:
    """``sdpa(q, k, v, scale=scale)`` with its heads merged and cast to ``out_dtype``, found in the graph; ``chain``:
    the nodes from the SDPA call to the linear's input, in order (each read only by the next)."""
    q: fx.Node
    k: fx.Node
    v: fx.Node
    scale: float | None
    out_dtype: torch.dtype
    chain: tuple


def _val(n):
    return n.meta.get("example_value", n.meta.get("val")) if isinstance(n, fx.Node) else None


def _dtype(n) -> torch.dtype | None:
    v = _val(n)
    return v.dtype if isinstance(v, torch.Tensor) else None


def _is_cast(n: fx.Node) -> bool:
    if n.op == "call_method" and n.target in _CAST_METHODS:
        if n.target == "to":   # only dtype conversions (a device move is not a cast we may drop)
            return len(n.args) == 2 and isinstance(n.args[1], torch.dtype) and not n.kwargs
        return len(n.args) == (2 if n.target == "type_as" else 1) and not n.kwargs
    return False


def _strip_casts(n):
    while isinstance(n, fx.Node) and _is_cast(n):
        n = n.args[0]
    return n


def _binary(n: fx.Node, ops) -> tuple | None:
    if n.op == "call_function" and n.target in ops and len(n.args) == 2 and not n.kwargs:
        return n.args
    if n.op == "call_method" and n.target == ops[0].__name__ and len(n.args) == 2 and not n.kwargs:
        return n.args
    return None


def _layer_norm(n) -> tuple | None:
    """(input, weight, bias, eps) of ``F.layer_norm(input, (K,), w, b, eps)``, else None."""
    if not isinstance(n, fx.Node) or n.op != "call_function" or n.target not in (F.layer_norm, torch.layer_norm):
        return None
    args = list(n.args) + [None] * (5 - len(n.args))
    inp, shape, w, b, eps = args[:5]
    w, b = n.kwargs.get("weight", w), n.kwargs.get("bias", b)
    eps = n.kwargs.get("eps", 1e-5 if eps is None else eps)
    if not isinstance(eps, (int, float)) or not isinstance(shape, (tuple, list)) or len(shape) != 1:
        return None
    return inp, w, b, float(eps)


def chain_op(n: fx.Node) -> bool:
    """A node that may appear in the matched chain (pure: safe to erase once nothing reads it)."""
    return _is_cast(n) or _binary(n, _ADD) is not None or _binary(n, _MUL) is not None or _layer_norm(n) is not None


def match(x: fx.Node, k: int) -> NormModulate | None:
    """The norm → modulate → cast chain that produces ``x`` (the linears' input), or None."""
    out_dtype = _dtype(x)
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    y = _strip_casts(x)
    mult = shift = None
    add = _binary(y, _ADD) if isinstance(y, fx.Node) else None
    if add is not None:
        add_node, mul_node = y, None
        for m_node, s_node in ((add[0], add[1]), (add[1], add[0])):
            mul_node = _strip_casts(m_node) if isinstance(m_node, fx.Node) else None
            mul = _binary(mul_node, _MUL) if mul_node is not None else None
            if mul is None or not isinstance(s_node, fx.Node):
                continue
            for n_node, f_node in ((mul[0], mul[1]), (mul[1], mul[0])):
                if isinstance(f_node, fx.Node) and _layer_norm(_strip_casts(n_node)) is not None:
                    y, mult, shift = _strip_casts(n_node), f_node, s_node
                    break
            if mult is not None:
                break
        if mult is None:
            return None
        # the graph's modulation runs in fp32 (the norm's output is fp32 and so are the products): the op's too
        if _dtype(add_node) != torch.float32 or _dtype(mul_node) != torch.float32:
            return None
    ln = _layer_norm(y)
    if ln is None:
        return None
    inp, w, b, eps = ln
    if _dtype(y) != torch.float32 or (w is None) != (b is None) or (w is not None and mult is not None):
        return None
    if w is not None:   # an affine norm without modulation: its weight and bias are the modulation
        mult, shift = w, b
    src = inp
    if isinstance(src, fx.Node) and _is_cast(src) and _dtype(src.args[0]) in (torch.float16, torch.bfloat16,
                                                                               torch.float32):
        src = src.args[0]      # x.float() of a 16-bit x: the kernel reads x and converts, exactly
    if not isinstance(src, fx.Node) or _dtype(src) not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    xv = _val(src)
    if xv is None or xv.dim() < 2 or xv.shape[-1] != k:
        return None
    for t in (mult, shift):
        if t is not None:
            tv = _val(t)
            if not isinstance(tv, torch.Tensor) or tv.shape[-1] != k or tv.dim() > xv.dim():
                return None
    return NormModulate(src, mult, shift, eps, out_dtype, k)


def _identity_dropout(n: fx.Node) -> bool:
    """``F.dropout(x, p, training, inplace)`` that is the identity: p = 0 or not training (an eval-mode module)."""
    if n.op != "call_function" or n.target is not F.dropout:
        return False
    args = list(n.args) + [0.5, True, False][len(n.args) - 1:]
    p = n.kwargs.get("p", args[1])
    training = n.kwargs.get("training", args[2])
    return (isinstance(p, (int, float)) and p == 0) or training is False


def match_gelu(x: fx.Node) -> GeluOfLinear | None:
    """The FFN-up → GELU (→ identity dropout) chain that produces ``x`` (the FFN-down's input), each node read only
    by the next, or None."""
    chain = []
    n = x
    while isinstance(n, fx.Node) and _identity_dropout(n):
        chain.append(n)
        n = n.args[0] if n.args else n.kwargs.get("input")
    if not isinstance(n, fx.Node) or n.op != "call_function" or n.target not in _GELU:
        return None
    approx = n.kwargs.get("approximate", n.args[1] if len(n.args) > 1 else "none")
    chain.append(n)
    y = n.args[0] if n.args else n.kwargs.get("input")
    if not isinstance(y, fx.Node) or y.op != "call_function" or y.target is not torch._C._nn.linear:
        return None
    chain = chain[::-1]
    for a, b in zip([y] + chain, chain + [None]):
        if b is not None and set(a.users) != {b}:
            return None
    if _dtype(y) != _dtype(x):
        return None
    return GeluOfLinear(y, tuple(chain), approx if isinstance(approx, str) else "none")


def _fused(p, m, why: str | None, what: str, how: str):
    """``p`` with ``producer = m`` and its reason saying ``how`` the activation is made, or, when ``why`` is set, only
    its reason saying why the ``what`` producer was not fused."""
    if why:
        return dataclasses.replace(p, reason=f"{p.reason}; {what} producer not fused: {why}")
    return dataclasses.replace(p, producer=m, reason=f"{p.reason}; activation quantized in its producer ({how})")


def _sdpa_args(n: fx.Node) -> tuple | None:
    """(q, k, v, scale) of a plain ``scaled_dot_product_attention`` call (no mask, no dropout, not causal, no GQA)."""
    if n.op != "call_function" or n.target not in _SDPA:
        return None
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    a = dict(zip(names, n.args)) | dict(n.kwargs)
    if a.get("attn_mask") is not None or a.get("dropout_p", 0.0) != 0 or a.get("is_causal", False) \
            or a.get("enable_gqa", False):
        return None
    scale = a.get("scale")
    if not all(isinstance(a.get(k), fx.Node) for k in names[:3]) or not (scale is None or isinstance(scale, float)):
        return None
    return a["query"], a["key"], a["value"], scale


def _merge_heads(n) -> fx.Node | None:
    """The [B, H, S, D] input of ``t.permute(0, 2, 1, 3).flatten(2, 3)`` (or ``transpose(1, 2)`` / ``flatten(2)``)."""
    if not (isinstance(n, fx.Node) and n.op == "call_method" and n.target == "flatten" and not n.kwargs
            and tuple(n.args[1:]) in ((2, 3), (2,), (2, -1))):
        return None
    t = n.args[0]
    if isinstance(t, fx.Node) and t.op == "call_method" and not t.kwargs and (
            (t.target == "permute" and tuple(t.args[1:]) in ((0, 2, 1, 3), ((0, 2, 1, 3),)))
            or (t.target == "transpose" and tuple(t.args[1:]) in ((1, 2), (2, 1)))):
        return t
    return None


def match_attention(x: fx.Node) -> AttentionOut | None:
    """The SDPA → merge heads (→ cast) chain that produces ``x`` (to_out's input), each node read only by the next,
    or None."""
    out_dtype = _dtype(x)
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None
    casts = []
    n = x
    while isinstance(n, fx.Node) and _is_cast(n):
        casts.append(n)
        n = n.args[0]
    perm = _merge_heads(n)
    if perm is None or not isinstance(perm.args[0], fx.Node):
        return None
    sdpa = perm.args[0]
    args = _sdpa_args(sdpa)
    if args is None:
        return None
    q, k, v, scale = args
    qv, xv = _val(q), _val(x)
    if not isinstance(qv, torch.Tensor) or qv.dim() != 4 or xv is None or xv.dim() != 3 \
            or xv.shape[-1] != qv.shape[1] * qv.shape[3]:
        return None
    chain = (sdpa, perm, n, *reversed(casts))
    for a, b in zip(chain, chain[1:]):
        if set(a.users) != {b}:
            return None
    return AttentionOut(q, k, v, scale, out_dtype, chain)


def assign_attention(layers: list, mode: str) -> list:
    """``layers`` with to_out's input quantized in the attention kernel's epilogue where the graph and the plans
    allow (``producer`` an :class:`AttentionOut`); the reasons say so, or why a quantized linear fed by attention was
    not. ``mode``: the validated ``fuse_attn`` option."""
    if mode == "off":
        return layers
    from ..kernels.attn_quant import unsupported_reason

    out = {}
    for p in layers:
        if p.decision != "quantize" or p.op != "qlinear" or p.site.x is None:
            continue
        m = match_attention(p.site.x)
        if m is None:
            continue
        triton = p.act_kernel == "triton"
        if mode == "auto" and not (triton and p.site.device is not None and p.site.device.type == "cuda"):
            continue   # auto: only where the kernel runs compiled (Triton on CUDA); fuse_attn="on" forces it
        why = None
        q, k, v = (_val(t) for t in (m.q, m.k, m.v))
        if set(p.site.x.users) != {p.site.node}:
            why = "the merged attention output has other readers"
        elif p.fused or p.producer is not None:
            why = "it quantizes its input in a fused kernel already"
        elif p.act_group == p.k:
            why = "a per-token activation scale spans the heads (the epilogue holds one head's channels)"
        else:
            why = unsupported_reason(tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, m.out_dtype,
                                     p.act_group, p.rotate)
        out[p.name] = _fused(p, m, why, "attention", "the attention kernel's epilogue, dvdq::attn_act_quant")
    return [out.get(p.name, p) for p in layers]


def assign_gelu(layers: list, mode: str) -> list:
    """``layers`` with the FFN-down input quantized in the FFN-up GEMM's epilogue where the graph and the plans allow:
    the FFN-down gets ``producer`` (a :class:`GeluOfLinear`), the FFN-up ``epilogue`` (the FFN-down's name); the
    reasons say so, or why a GELU-fed quantized linear was not. ``mode``: the validated ``fuse_gelu`` option."""
    if mode == "off":
        return layers
    from ..kernels.gelu_quant import unsupported_reason

    by_node = {p.site.node: p for p in layers if p.site.node is not None}
    out = {}
    for p in layers:
        if p.decision != "quantize" or p.op != "qlinear" or p.site.x is None:
            continue
        m = match_gelu(p.site.x)
        up = by_node.get(m.y) if m is not None else None
        if up is None:
            continue
        triton = p.act_kernel == "triton" and up.kernel == "triton"
        if mode == "auto" and not (triton and p.site.device is not None and p.site.device.type == "cuda"):
            continue   # auto: only where the kernel pays (Triton on CUDA); fuse_gelu="on" forces it elsewhere
        why = None
        if set(p.site.x.users) != {p.site.node}:
            why = "its GELU output has other readers"
        elif up.decision != "quantize" or up.op != "qlinear" or up.fused:
            why = f"the FFN-up {up.name} is not a split integer GEMM ({up.op}, decision {up.decision})"
        elif up.name in out:   # its own GELU-fed input codes come from an earlier epilogue: one link per chain
            why = f"the FFN-up {up.name} already reads its input from another FFN-up's epilogue"
        elif p.fused or p.producer is not None:
            why = "it quantizes its input in a fused kernel already"
        elif p.act_group == p.k:
            why = "a per-token activation scale spans the FFN-up's output tiles"
        elif triton and (r := unsupported_reason(up.n, p.act_group, p.rotate, up.site.dtype, m.approximate)):
            why = r
        out[p.name] = _fused(p, m, why, "FFN-up epilogue",
                             f"{up.name} GEMM epilogue: GELU → rotate → quantize, dvdq::qlinear_gelu_quant")
        if why:
            continue
        out[up.name] = dataclasses.replace(
            up, epilogue=p.name, reason=f"{up.reason}; its epilogue applies GELU and quantizes {p.name}'s input "
                                        "(its own output is not written)")
    return [out.get(p.name, p) for p in layers]


def assign(layers: list, mode: str) -> list:
    """``layers`` (frozen ``LayerPlan``\\ s) with ``producer`` set on the layers whose activation is quantized in its
    producer; the reasons say so, or why a layer that could have been was not. ``mode``: the validated
    ``fuse_norm`` option (``config.FUSE_NORM``)."""
    if mode == "off":
        return layers
    from ..kernels.norm_quant import unsupported_reason

    readers: dict = {}
    for p in layers:
        if p.site.x is not None:
            readers.setdefault(p.site.x, []).append(p)
    out = {}
    for x, group in readers.items():
        if not all(p.decision == "quantize" and p.op == "qlinear" for p in group):
            continue
        if mode == "auto" and not all(p.act_kernel == "triton" and p.site.device is not None
                                      and p.site.device.type == "cuda" for p in group):
            continue   # auto: only where the kernel pays (Triton on CUDA); fuse_norm="on" forces it elsewhere
        m = match(x, group[0].k)
        if m is None:
            continue
        why = None
        if {u for u in x.users} != {p.site.node for p in group}:
            why = "its normalized activation has other readers"
        elif any(p.fused or p.act_bits is not None or p.rotate != group[0].rotate or p.act_group != group[0].act_group
                 for p in group):
            why = "its readers quantize the activation differently (fused kernel, fixed bits, group or rotation)"
        elif any(p.act_kernel == "triton" for p in group) and \
                (r := unsupported_reason(m.k, group[0].act_group, group[0].rotate, m.out_dtype)):
            why = r
        for p in group:
            out[p.name] = _fused(p, m, why, "norm→modulate", "layer norm → modulate → cast, dvdq::norm_act_quant")
    return [out.get(p.name, p) for p in layers]
