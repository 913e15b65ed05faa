"""The diffusers 0.42.1 workarounds (dvdq_compile/parallel/compat.py) without spawning ranks."""
from __future__ import annotations

import torch

import dvdq_compile  # noqa: F401  (installs the patch)


def test_context_parallel_module_is_patched_on_import():
    import diffusers.hooks.context_parallel as cp

    from dvdq_compile.parallel import compat
    assert getattr(cp, "_dvdq_patched", False)
    assert cp.ModuleForwardMetadata._get_parameter_from_args_kwargs is compat._get_parameter_from_args_kwargs
    assert cp.logger.warning_once in torch._dynamo.config.ignore_logging_functions
    assert compat.patch(cp)  # idempotent


def test_parameter_lookup_keeps_diffusers_contract():
    from diffusers.hooks.context_parallel import ModuleForwardMetadata

    class Block(torch.nn.Module):
        def forward(self, hidden_states, temb, rotary=None):
            return hidden_states

    meta = ModuleForwardMetadata(_cls=Block)
    x, t = torch.ones(1), torch.zeros(1)
    assert meta._get_parameter_from_args_kwargs("temb", (x, t)) == (t, False, 1)
    assert meta._get_parameter_from_args_kwargs("temb", (x,), {"temb": t}) == (t, True, None)
    for ident, args, msg in (("nope", (x, t), "not found in function signature"), ("rotary", (x, t), "Expected 2")):
        try:
            meta._get_parameter_from_args_kwargs(ident, args)
        except ValueError as e:
            assert msg in str(e)
        else:
            raise AssertionError(f"{ident}: no error")


def test_traced_lookup_has_no_graph_break():
    """The hook's positional lookup (the first call of a hooked block) compiles with fullgraph=True."""
    from diffusers.hooks.context_parallel import ModuleForwardMetadata

    class Block(torch.nn.Module):
        def forward(self, hidden_states, temb):
            return hidden_states + temb

    def f(x, t):
        meta = ModuleForwardMetadata(_cls=Block)
        v, _, i = meta._get_parameter_from_args_kwargs("temb", (x, t))
        return v * (i + 1)

    x, t = torch.ones(3), torch.full((3,), 2.0)
    assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x, t), t * 2)


def test_cpu_device_count():
    from dvdq_compile.parallel.compat import cpu_device_count
    before = torch.accelerator.device_count()
    with cpu_device_count():
        assert torch.accelerator.device_count() >= 1
    assert torch.accelerator.device_count() == before
