"""``free_weights``: release the 16-bit storage of quantized weights once their quantized copy is cached.

After a compiled graph has quantized its weights, the rewritten graph no longer reads the original parameters, so
their storage can go: ``p.untyped_storage().resize_(0)`` keeps the tensor's size, stride, dtype and device, so
Dynamo's guards stay valid and nothing recompiles (docs/architecture.md §8). The parameter object itself stays
(the quantized-weight cache is keyed by its identity).

Reading a tensor whose storage is gone is undefined: some ops raise, some dereference a null pointer and kill the
process (seen on CPU: ``p.sum()``, ``p.clone()``). So every path that can still reach a freed weight is guarded:

* an **eager module call** (the uncompiled model, Dynamo's eager fallback past its recompile limit, the Python
  between graphs at a graph break) runs a global forward pre-hook that raises :class:`FreedWeightError` naming the
  module, the parameter and how to get it back. Under Dynamo tracing the hook does nothing, so a recompile (new
  shape) still traces; Dynamo does not guard on hooks, so installing it does not recompile anything.
* a **compiled graph that still reads** a freed parameter (compiled with other options, or a weight a graph keeps
  in full precision) raises the same error before it runs;
* a weight whose storage is **shared** with other tensors (a view into a bigger buffer, a non-contiguous or offset
  tensor) is never freed: freeing it would destroy its neighbours. It is logged and listed by ``freed_weights``.

Not intercepted: direct tensor reads outside a module call (``p.sum()``, ``model.to(...)``,
``torch.save(model.state_dict())``). Check with :func:`dvdq_compile.freed_weights` and bring the weights back with
:func:`dvdq_compile.restore_weights` first.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from ..artifacts.fingerprint import checksum, weight_fingerprint
from ..errors import FreedWeightError
from ..state import STATE

log = logging.getLogger("dvdq_compile")


@dataclass
class Freed:
    name: str  # the quantized layer(s) that own it
    nbytes: int
    checksum: tuple  # of the values at free time: a restore with other values invalidates the quantized copy
    fingerprint: str  # artifacts.weight_fingerprint at free time: artifacts are still checked against it


_HOOK: list = []  # the global eager-call guard, installed once per process


def epoch() -> int:
    """Bumped on every free / restore (``STATE.free_epoch``): graphs skip their read check when unchanged."""
    return STATE.free_epoch


def is_freed(p: torch.Tensor) -> bool:
    return p in STATE.freed


def info(p: torch.Tensor) -> Freed | None:
    return STATE.freed.get(p)


def not_freeable(p: torch.Tensor) -> str | None:
    """Why ``p``'s storage cannot be released (None if it can)."""
    st = p.untyped_storage()
    if st.nbytes() == 0:
        return "already has no storage"
    if p.storage_offset() != 0 or not p.is_contiguous() or st.nbytes() != p.numel() * p.element_size():
        return "its storage is shared with other tensors (a view or an offset/strided tensor)"
    return None


def message(name: str, what: str) -> str:
    return (f"dvdquant free_weights: {what} reads the weight of {name}, whose 16-bit storage was released after "
            "quantization (options={'free_weights': True}). Run the model through its compiled graph only, or "
            "bring the weights back first: dvdq_compile.restore_weights(model, state_dict) (or reload the model)")


def require_storage(p: torch.Tensor, name: str, what: str) -> None:
    """Raise ``FreedWeightError`` before ``what`` reads ``p`` if its storage was released (reading it would crash)."""
    if p.untyped_storage().nbytes() == 0 and p.numel():
        raise FreedWeightError(message(name, what))


def _guard(module, _args):
    # Under tracing this is a no-op: the compiled graph reads the quantized copy, not the parameter.
    freed = STATE.freed
    if torch.compiler.is_compiling() or not freed.nonempty():
        return
    for pname, p in module._parameters.items():
        if p is not None and p in freed:
            raise FreedWeightError(message(freed.get(p).name, f"an eager call of {type(module).__name__} "
                                                              f"(parameter {pname!r})"))


# Module hooks that run in Python while torch.compile's frame callback is active (the root module's call, eager
# fallback past the recompile limit, graph breaks) get their frames compiled by Dynamo like user code: this hook
# would be traced on its own with is_compiling() folded to True, i.e. a no-op exactly where the check is needed.
# So its frame and everything it calls are skipped (plain Python); inlined into a traced module call it still
# folds away without a graph break.
_ef = torch._dynamo.eval_frame
_ef.set_code_exec_strategy(_guard.__code__, _ef.FrameExecStrategy(_ef.FrameAction.SKIP, _ef.FrameAction.SKIP))


def _install_guard() -> None:
    if not _HOOK:
        # torch warns that a global hook also fires for the OptimizedModule wrapper: harmless here (the wrapper
        # has no parameters of its own), and the warning would otherwise reach every user of free_weights.
        warnings.filterwarnings("ignore", message=r"Using `torch.compile\(module\)` when there are global hooks")
        _HOOK.append(torch.nn.modules.module.register_module_forward_pre_hook(_guard))


def free(p: torch.Tensor, name: str) -> int:
    """Release ``p``'s storage; returns the bytes freed (0 if it must stay, with the reason logged)."""
    if p in STATE.freed:
        return 0
    why = not_freeable(p)
    if why is not None:
        log.warning("dvdquant free_weights: keeping the weight of %s: %s", name, why)
        return 0
    _install_guard()
    nbytes = p.untyped_storage().nbytes()
    STATE.freed[p] = Freed(name, nbytes, checksum(p), weight_fingerprint(p))
    p.untyped_storage().resize_(0)
    STATE.free_epoch += 1
    return nbytes


def restore(p: torch.Tensor, value: torch.Tensor, name: str) -> bool:
    """Give freed ``p`` its storage back with ``value``; returns whether the values differ from the freed ones
    (then the cached quantized copy is invalidated, and the next compiled call requantizes)."""
    rec = STATE.freed.get(p)
    if rec is None:
        raise ValueError(f"dvdq_compile.restore_weights: {name} was not freed")
    if tuple(value.shape) != tuple(p.shape):
        raise ValueError(f"dvdq_compile.restore_weights: {name} has shape {tuple(p.shape)}, the value given has "
                         f"{tuple(value.shape)}")
    p.untyped_storage().resize_(rec.nbytes)
    with torch.no_grad():
        p.data.copy_(value)  # through .data: no _version bump, the quantized copy stays valid if values match
    changed = checksum(p) != rec.checksum
    if changed:
        with torch.no_grad():
            p.mul_(1)  # bumps _version: the cache requantizes from the restored values
    STATE.freed.pop(p)
    STATE.free_epoch += 1
    return changed
