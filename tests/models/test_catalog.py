"""Every video transformer diffusers exports, from its tiny config (tests/models/catalog): the default layer policy
recognises its block linears, and the default ``torch.compile`` (graph breaks and all) quantizes the same layers as
``fullgraph=True``, with the output of the quant reference composed over those layers."""
import re

import diffusers
import pytest

from dvdq_compile.config import DEFAULT_BLOCK_PATTERN
from tests.models.catalog import SPECS
from tests.models.catalog.survey import survey

# Bound on the compiled output vs the reference composition: both compute the same quantized layers; they differ by
# the fp32 summation order of the Hadamard rotation (kernel vs torch.matmul), which flips an activation code at a
# rounding tie now and then (tests/kernels/helpers.tie_rows); each flip moves one token's output by one A8 step.
REF_ERR = 2e-3


def test_catalog_covers_every_video_transformer():
    exported = {n for n in dir(diffusers) if n.endswith("Transformer3DModel")}
    assert exported == set(SPECS), f"no tiny spec for {sorted(exported - set(SPECS))}; stale: " \
                                   f"{sorted(set(SPECS) - exported)}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_default_block_pattern_recognises_the_block_linears(name):
    import torch

    spec = SPECS[name]
    model = spec.build()
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    in_blocks = {n for n in linears if any(n.startswith(b + ".") for b in spec.blocks)}
    matched = {n for n in linears if re.search(DEFAULT_BLOCK_PATTERN, n)}
    assert in_blocks and matched == in_blocks, (sorted(in_blocks - matched)[:5], sorted(matched - in_blocks)[:5])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SPECS))
def test_default_compile_quantizes_what_fullgraph_does_or_warns(name):
    s = survey(name, SPECS[name])
    d, f = s.default, s.fullgraph
    assert d.ok, d.error
    assert d.quantized <= s.block_linears  # the policy quantizes block linears only
    assert d.ref_err is not None and d.ref_err < REF_ERR, d.ref_err
    if f.ok:
        assert f.quantized <= s.block_linears and f.ref_err < REF_ERR, f.ref_err
    # block linears no graph covers: never called (single graph), or run eagerly after a graph break: then warned
    missing = s.block_linears - d.quantized
    assert missing <= d.not_compiled, sorted(missing - d.not_compiled)[:5]
    eager = missing - (s.block_linears - f.quantized) if f.ok else missing
    if eager and d.graphs > 1:
        assert len(d.warnings) == 1 and "ran outside every compiled graph" in d.warnings[0], d.warnings
    else:
        assert not d.warnings, d.warnings
        if f.ok:
            assert d.quantized == f.quantized
