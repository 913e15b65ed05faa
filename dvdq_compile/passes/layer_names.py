"""Layer names that survive graph breaks: the module path of each linear in the model the user compiled.

After a graph break Dynamo may compile a submodule's ``forward`` as its own frame (a transformer block, an attention
processor). Inside that frame every path is relative to the block (``L['self'].attn.to_q``): the ``blocks.N.``
prefix that the layer policy matches is gone. The parameters are the model's own objects, though, so the prefix is
recovered from them: look a weight up in the owner model (``passes/owner.py``) and compare its full name with its
path in the frame (``blocks.3.attn.to_q.weight`` vs ``attn.to_q.weight``: prefix ``blocks.3.``).

A frame path may also take detours the model's names do not have: a module whose ``forward`` was replaced by a
diffusers hook (context parallelism) is reached as ``L['function_reference'].forward.__self__.blocks.0...``. So the
prefix is what the full name has before the longest dotted suffix the two paths share, and a linear whose weight is
a parameter of the model is named from that parameter itself (its module path), whatever route the frame took.

A block frame compiled once runs every block: the prefix names the block the graph was traced for, and the report
names each bound block's layers from its own parameters (``runtime/report.py``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import fx

from .owner import find_owner, name_of


def source_path(source_name: str) -> tuple[str, str]:
    """``("self", "attn.to_q.weight")`` from a Dynamo source or ``nn_module_stack`` path such as
    ``L['self']._modules['attn']._modules['to_q']._parameters['weight']`` or ``L['model'].blocks[0].attn``.
    The local is ``""`` when the path does not start at a frame local."""
    s = str(source_name)
    while (t := re.sub(r"getattr\(([^()]*), '([^']*)'\)", r"\1.\2", s)) != s:
        s = t
    m = re.match(r"^L\['([^']*)'\]", s)
    local = m.group(1) if m else ""
    s = s[m.end():] if m else s
    for wrapper in (".__dict__['_modules']", ".__dict__['_parameters']", "._modules", "._parameters"):
        s = s.replace(wrapper, "")
    s = re.sub(r"\['([^']*)'\]", r".\1", s)
    s = re.sub(r"\[(\d+)\]", r".\1", s)
    return local, s.strip(".")


@dataclass
class Frame:
    """The model a compiled graph's parameters belong to, and the name prefix of each frame local that holds one of
    its modules (``self`` of a block's forward, ``attn`` of an attention processor's ``__call__``)."""
    owner: torch.nn.Module | None = None
    prefix: dict[str, str] = field(default_factory=dict)
    # local -> (input index, path under the local) of one of its parameters: for another instance bound to the same
    # graph, the local's prefix is that parameter's full name minus the path
    anchors: dict[str, tuple[int, str]] = field(default_factory=dict)
    # local -> the part of its frame paths before the shared suffix (``forward.__self__.`` through a hook)
    hops: dict[str, str] = field(default_factory=dict)


def shared_suffix(a: str, b: str) -> str:
    """The longest dotted suffix of both ``a`` and ``b`` (``"attn.to_q.weight"``), ``""`` if none."""
    pa, pb = a.split("."), b.split(".")
    n = 0
    while n < min(len(pa), len(pb)) and pa[-1 - n] == pb[-1 - n]:
        n += 1
    return ".".join(pa[len(pa) - n:]) if n else ""


def _source_name(node: fx.Node) -> str | None:
    src = getattr(node.meta.get("grapharg"), "source", None)
    if src is None:
        return None
    return src.name() if callable(src.name) else src.name  # a method before torch 2.12, a property after


def frame_of(gm: fx.GraphModule, example_inputs) -> Frame:
    """The owner model and ``{frame local: name prefix}`` for the parameter inputs of ``gm``: ``{"self":
    "blocks.3."}`` for a block compiled as its own frame, ``{"self": ""}`` for the model's own frame. Locals whose
    parameters have no owner on the stack get no prefix (their paths are relative to the module the user passed)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    frame = Frame()
    for i, (node, ex) in enumerate(zip(placeholders, example_inputs)):
        if not isinstance(ex, torch.nn.Parameter) or (name := _source_name(node)) is None:
            continue
        local, rel = source_path(name)
        if not local or local in frame.prefix:
            continue
        if frame.owner is None:
            frame.owner = find_owner(ex)
            if frame.owner is None:
                return Frame()
        full = name_of(frame.owner, ex)
        suffix = shared_suffix(full, rel) if full is not None else ""
        if suffix:
            frame.prefix[local] = full[: len(full) - len(suffix)]
            frame.hops[local] = rel[: len(rel) - len(suffix)]
            frame.anchors[local] = (i, suffix)
    return frame


def rename(name: str, old_prefix: str, new_prefix: str) -> str:
    """``blocks.0.attn.to_q`` -> ``blocks.5.attn.to_q``: a layer of the instance a graph was traced for, named for
    another instance bound to the same graph."""
    if old_prefix == new_prefix or not name.startswith(old_prefix):
        return name
    return new_prefix + name[len(old_prefix):]


def layer_name(node: fx.Node, frame: Frame, fallback: str, weight: torch.Tensor | None = None) -> tuple[str, str]:
    """(the path of the module that called this linear in the owner model's namespace, the frame local it hangs
    off). ``weight``: the linear's weight when it is a graph input; a parameter of the owner names the layer (the
    module path of that parameter), so detours in the frame path do not matter."""
    stack = node.meta.get("nn_module_stack")
    local, rel = "", ""
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        local, rel = source_path(str(path))
        hop = frame.hops.get(local, "")
        if hop and rel.startswith(hop):
            rel = rel[len(hop):]
    if isinstance(weight, torch.nn.Parameter) and frame.owner is not None:
        full = name_of(frame.owner, weight)
        if full is not None and "." in full:
            return full.rsplit(".", 1)[0], local
    if not stack:
        return fallback, ""
    name = (frame.prefix.get(local, "") + rel).strip(".")
    return (name, local) if name else (fallback, "")
