"""Layer identity that survives graph breaks: a block compiled as its own frame is still a block of its model."""
import logging

import pytest
import torch

import dvdq_compile
from tests.helpers import Block, TinyDiT, compiled

X = torch.randn(2, 20, 24, generator=torch.Generator().manual_seed(3))
T = torch.tensor([500, 500])


class BreakBlock(Block):
    """A block whose forward starts with a graph break: Dynamo skips the model's frame (a break inside its loop)
    and compiles ``BreakBlock.forward`` as its own frame, once for every instance."""

    def forward(self, x, temb):
        torch._dynamo.graph_break()
        return super().forward(x, temb)


def broken(model: TinyDiT) -> TinyDiT:
    for i, b in enumerate(model.blocks):
        nb = BreakBlock()
        nb.load_state_dict(b.state_dict())
        model.blocks[i] = nb
    return model


def _rows(rep):
    return {r.name: (r.decision, r.weight_bits, r.act_bits, r.bytes_after) for r in rep.layers}


def _compile(model, fullgraph, **options):
    options = {"lowering": "eager", "kernels": "reference", "progress": False, "act_bits": 8, **options}
    torch._dynamo.reset()
    return torch.compile(model, backend="dvdquant", options=options, fullgraph=fullgraph)


def test_block_frames_quantize_the_same_layers_as_fullgraph():
    ref_model, model = TinyDiT(), broken(TinyDiT())
    with torch.no_grad():
        y_full = _compile(ref_model, True)(X, T)
        full = dvdq_compile.report(ref_model)
        y = _compile(model, False)(X, T)
        rep = dvdq_compile.report(model)
    quantized = {n for n, r in _rows(full).items() if r[0] != "skip"}
    assert len(quantized) == 14
    # every block layer: same decision, bits and bytes, named with its own block index
    assert {n: r for n, r in _rows(rep).items() if n in quantized} == {n: _rows(full)[n] for n in quantized}
    # the embedders and the final projection ran eagerly (Dynamo skipped the model's frame): listed, not hidden
    for name in ("patch", "time", "proj_out"):
        row = next(r for r in rep.layers if r.name == name)
        assert row.decision == "skip" and "not in any compiled graph" in row.reason
    assert rep.graphs == 1  # one block graph, bound to both blocks
    torch.testing.assert_close(y, y_full, rtol=1e-5, atol=1e-5)


def test_block_frame_under_a_compiled_function():
    model = broken(TinyDiT())

    def run(m, x, t):
        return m(x, t)

    torch._dynamo.reset()
    opts = {"lowering": "eager", "kernels": "reference", "progress": False, "act_bits": 8}
    with torch.no_grad():
        torch.compile(run, backend="dvdquant", options=opts)(model, X, T)
    assert {r.name for r in dvdq_compile.report(model).layers if r.decision == "quantize"} == {
        f"blocks.{i}.{n}" for i in range(2) for n in ("to_q", "to_k", "to_v", "to_out", "ff1", "ff2")}


def test_a_pattern_for_one_block_of_a_shared_frame_warns_and_the_report_says_so(caplog):
    model = broken(TinyDiT())
    with caplog.at_level(logging.WARNING, logger="dvdq_compile"), torch.no_grad():
        _compile(model, False, exclude=["blocks.1.*"])(X, T)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("run a graph Dynamo compiled for another instance" in m and "blocks.1." in m for m in msgs), msgs
    rows = {r.name: r for r in dvdq_compile.report(model).layers}
    # blocks.0 traced first: its decisions run for blocks.1 too, and the report tells
    assert rows["blocks.1.to_q"].decision == "quantize"
    assert "its own decision would be skip (excluded by pattern 'blocks.1.*')" in rows["blocks.1.to_q"].reason


def test_fullgraph_honours_a_pattern_for_one_block():
    model = TinyDiT()
    with torch.no_grad():
        _compile(model, True, exclude=["blocks.1.*"])(X, T)
    rows = {r.name: r for r in dvdq_compile.report(model).layers}
    assert rows["blocks.1.to_q"].decision == "skip" and rows["blocks.0.to_q"].decision == "quantize"


def test_nothing_quantized_warns_once_with_the_option_to_pass(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
    x = torch.randn(4, 32, 256)
    with caplog.at_level(logging.WARNING, logger="dvdq_compile"), torch.no_grad():
        c = _compile(model, False)
        for _ in range(3):
            c(x)
    msgs = [r.getMessage() for r in caplog.records]
    assert len([m for m in msgs if "none of its linears is quantized" in m]) == 1, msgs
    assert "'include': ['*']" in msgs[0]
    rep = dvdq_compile.report(model)
    assert rep.count("quantize") == 0 and rep.warnings and "0 of 2 linears quantized" in rep.warnings[0]


def test_little_quantized_warns_at_the_second_forward(caplog):
    model = broken(TinyDiT())
    with caplog.at_level(logging.WARNING, logger="dvdq_compile"), torch.no_grad():
        c = _compile(model, False, exclude=["*.ff*", "*.to_*"])
        c(X, T)
        first = [r.getMessage() for r in caplog.records]
        c(X, T)
        c(X, T)
    msgs = [r.getMessage() for r in caplog.records]
    assert not any("linears quantized" in m for m in first)
    cover = [m for m in msgs if "linears quantized" in m]
    assert len(cover) == 1 and "TinyDiT: 2 of 17 linears quantized" in cover[0], msgs
    assert "excluded by pattern" in cover[0] and "not in any compiled graph" in cover[0]


def test_pattern_that_matches_nothing_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="dvdq_compile"), torch.no_grad():
        compiled(TinyDiT(), act_bits=8, exclude=["transformer_blocks.*"])(X, T)
    assert any("pattern 'transformer_blocks.*' matches no module of TinyDiT" in r.getMessage()
               for r in caplog.records)


def test_string_pattern_option_is_an_error():
    with pytest.raises(ValueError, match=r"include='blocks\.\*' is a string; expected .* e\.g\. \{'include': "
                                         r"\['blocks\.\*'\]\}"):
        with torch.no_grad():
            compiled(TinyDiT(), include="blocks.*")(X, T)
