"""Compiled kernels on a CUDA GPU: bf16 inputs, autotuned configs, video-DiT-sized shapes, vs the reference.

Run with ``TRITON_INTERPRET=0 python -m pytest tests/kernels -m gpu`` (skipped on CPU and under the interpreter).
"""
import pytest
import torch
import triton
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels import act_quant as aq_mod
from dvdq_compile.kernels import fused as fused_mod
from dvdq_compile.kernels import launch as kernels
from dvdq_compile.kernels import qlinear as ql_mod

from .helpers import assert_out_close, assert_out_close_rotated, make_weight, make_x, near_tie_x, tie_rows

pytestmark = pytest.mark.gpu
DEV = "cuda"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # keeps the reference's fp32 matmuls exact
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def test_autotune_has_several_configs():
    assert len(ql_mod._CONFIGS) > 1 and len(aq_mod._CONFIGS) > 1 and len(fused_mod._CONFIGS) > 1


@pytest.mark.parametrize("bits,group", [(4, 32), (8, 128)])
def test_act_quant_division_and_rounding_exact(bits, group):
    """Near-tie data: codes match only with IEEE division (div_rn) and round-half-even (rint) in compiled code."""
    x = near_tie_x(512, 1024, group, bits, gen=_gen(bits)).to(DEV)
    c, s = kernels.act_quant(x, bits, group, 0, quant.NO_SIGNS)
    rc, rs = quant.quantize_act(x, bits, group)
    assert torch.equal(s, rs) and torch.equal(c, rc)


@pytest.mark.parametrize("bits,group", [(4, 32), (8, 128)])
def test_reference_does_not_depend_on_the_device(bits, group):
    """The specification gives the same bits on CUDA as on the CPU (PyTorch's CUDA division by a Python scalar
    multiplies by its reciprocal: dvdq_compile/quant/exact.py). Near-tie data, where one bit of a scale flips codes."""
    from dvdq_compile.quant.minmax import minmax_rows

    x = near_tie_x(512, 1024, group, bits, gen=_gen(bits))
    c, s = quant.quantize_act(x, bits, group)
    cg, sg = quant.quantize_act(x.to(DEV), bits, group)
    assert torch.equal(sg.cpu(), s) and torch.equal(cg.cpu(), c)
    w = torch.randn(256, 1024, generator=_gen(5)) * (1 + 9 * (torch.rand(1024, generator=_gen(6)) > 0.99))
    d, z = minmax_rows(w, 4)
    dg, zg = minmax_rows(w.to(DEV), 4)
    assert torch.equal(dg.cpu(), d) and torch.equal(zg.cpu(), z)


@pytest.mark.parametrize("group", [128, 3072])
def test_act_quant_bf16_rotated(group):
    x = make_x(4096, 3072, torch.bfloat16, gen=_gen(1)).to(DEV)
    c, s = kernels.act_quant(x, 8, group, 128, 17)
    rc, rs = quant.quantize_act(x, 8, group, 128, 17)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=0)
    d = (c.int() - rc.int()).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 1e-3
    c0, s0 = kernels.act_quant(x, 4, group, 0, quant.NO_SIGNS)
    rc0, rs0 = quant.quantize_act(x, 4, group)
    assert torch.equal(c0, rc0) and torch.equal(s0, rs0)


@pytest.mark.parametrize("wbits", [4, 8])
@pytest.mark.parametrize("group", [128, 1024])
def test_int_partials_exact(group, wbits):
    x = make_x(1000, 1024, gen=_gen(2)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(520, 1024, wbits, gen=_gen(3)))
    c, s = quant.quantize_act(x, 8, group)
    p = kernels.qlinear_int_partials(c, s, packed, ws, wz, wbits)
    assert torch.equal(p, quant.int_partials(c, packed, wz, wbits, group))


@pytest.mark.parametrize("expand", [False, True])
@pytest.mark.parametrize("wbits,group", [(4, 128), (3, 128), (4, 1024)])
def test_expanded_and_packed_loops_exact(wbits, group, expand):
    """Both inner loops (packed nibbles, int8-expanded q − z) give the reference's partials; ragged M and N."""
    x = make_x(4133, 1024, gen=_gen(7)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(777, 1024, wbits, gen=_gen(8)))
    c, s = quant.quantize_act(x, 8, group)
    p = kernels.qlinear_int_partials(c, s, packed, ws, wz, wbits, expand=expand)
    assert torch.equal(p, quant.int_partials(c, packed, wz, wbits, group))


@pytest.mark.parametrize("abits,group,wbits", [(8, 128, 4), (4, 128, 4), (8, 3072, 4), (4, 64, 4), (8, 128, 8),
                                               (8, 3072, 8)])
def test_large_bf16_vs_reference(abits, group, wbits):
    m, n, k = 4096, 3072, 3072
    x = make_x(m, k, torch.bfloat16, gen=_gen(4)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(n, k, wbits, gen=_gen(5)))
    bias = torch.randn(n, generator=_gen(6)).to(torch.bfloat16).to(DEV)
    rc, rs = quant.quantize_act(x, abits, group, 128 if group != 64 else 64, 3)
    yr = quant.qlinear_ref(rc, rs, packed, ws, wz, bias, wbits, torch.bfloat16)
    # same codes: tight
    y = kernels.qlinear(rc, rs, packed, ws, wz, bias, wbits, torch.bfloat16)
    assert_out_close(y, yr, torch.bfloat16)
    # split and fused from bf16 activations (rotation: a few codes may differ by one)
    rot = 128 if group != 64 else 64
    c, s = kernels.act_quant(x, abits, group, rot, 3)
    ys = kernels.qlinear(c, s, packed, ws, wz, bias, wbits, torch.bfloat16)
    ties = tie_rows(x, abits, group, rot, 3)
    assert_out_close_rotated(ys, yr, ties, rs, ws, wbits, torch.bfloat16)
    if kernels.supports(wbits, tuple(ws.shape), group, k, rotate=rot, variant="fused"):
        yf = kernels.fused_qlinear(x, packed, ws, wz, bias, wbits, abits, group, rot, 3)
        assert_out_close_rotated(yf, yr, ties, rs, ws, wbits, torch.bfloat16)


@pytest.mark.parametrize("m", [1, 17, 300])
def test_ragged_small_m_fp16(m):
    x = make_x(m, 1536, torch.float16, gen=_gen(m)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(1000, 1536, 3, gen=_gen(7)))
    rc, rs = quant.quantize_act(x, 8, 128)
    yr = quant.qlinear_ref(rc, rs, packed, ws, wz, None, 3, torch.float16)
    out = torch.full((m, 1000), float("nan"), dtype=torch.float16, device=DEV)
    assert_out_close(kernels.qlinear(rc, rs, packed, ws, wz, None, 3, torch.float16, out=out), yr, torch.float16)
    assert_out_close(kernels.fused_qlinear(x, packed, ws, wz, None, 3, 8, 128, 0, -1), yr, torch.float16)


def test_fp32_input_rotated():
    x = make_x(512, 1024, torch.float32, gen=_gen(8)).to(DEV)
    c, s = kernels.act_quant(x, 8, 128, 128, 5)
    rc, rs = quant.quantize_act(x, 8, 128, 128, 5)
    torch.testing.assert_close(s, rs, rtol=1e-5, atol=0)
    assert int((c.int() - rc.int()).abs().max()) <= 1


def test_int64_offsets_large_m():
    """M·K > 2^31 elements in the activation: int64 row offsets."""
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2**30:
        pytest.skip("needs ~20 GB")
    m, k, n = 2**31 // 1024 + 64, 1024, 64
    x = torch.randn(m, k, dtype=torch.bfloat16, device=DEV)
    c, s = kernels.act_quant(x, 8, 128, 0, -1)
    tail = slice(m - 100, m)
    rc, rs = quant.quantize_act(x[tail], 8, 128)
    assert torch.equal(c[tail], rc) and torch.equal(s[tail], rs)
    packed, ws, wz = (t.to(DEV) for t in make_weight(n, k, 4, gen=_gen(9)))
    y = kernels.qlinear(c, s, packed, ws, wz, None, 4, torch.bfloat16)
    assert_out_close(y[tail], quant.qlinear_ref(rc, rs, packed, ws, wz, None, 4, torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("k,bits", [(1536, 4), (8960, 4), (5120, 3)])
def test_bgr_kernel_vs_reference(k, bits):
    """The Triton BGR search on a rotated Gaussian weight: per-row errors equal the reference's (the sums' order
    differs, so a near-tie may go the other way on a few rows), never worse than MinMax; and quantize_weight on a
    CUDA weight takes the kernel the backend hands it."""
    from dvdq_compile.kernels import bgr as bgr_mod
    from dvdq_compile.kernels.dispatch import bgr_solver
    from dvdq_compile.quant.qweight import WeightSpec, quantize_weight

    w = quant.rotate((torch.randn(512, k, generator=_gen(k)) * 0.02).to(DEV), 128)
    d, z = bgr_mod.bgr_rows(w, bits)
    dr, zr = quant.bgr_rows(w, bits)

    def err(d, z):
        q = (torch.round(w / d[:, None]) + z[:, None]).clamp(0, 2**bits - 1)
        return (w.double() - d[:, None].double() * (q - z[:, None]).double()).square().sum(1)

    e, er = err(d, z), err(dr, zr)
    codes, scale, zero = quant.minmax(w, bits)
    emm = (w.double() - scale.double() * (codes.double() - zero.double())).square().sum(1)
    assert bool((e <= emm * (1 + 1e-5)).all())
    assert float(((e - er).abs() <= 1e-4 * er).double().mean()) >= 0.99
    assert bool(((e - er).abs() <= 0.05 * er).all())
    assert bgr_solver(w.device, k, "auto") is bgr_mod.bgr_rows and bgr_solver(w.device, k, "reference") is None
    assert bgr_solver(w.device, bgr_mod.MAX_L + 1, "auto") is None  # rows too long for registers: the reference
    qw = quantize_weight(w, WeightSpec(bits=bits, rotate=0), rows_fn=bgr_solver(w.device, k))
    assert torch.equal(qw.scale[:, 0], d) and torch.equal(qw.zero[:, 0], z.to(torch.int32))


@pytest.mark.parametrize("k,group", [(1536, 128), (5120, 128), (3072, 64)])
def test_norm_act_quant_bf16(k, group):
    """Layer norm → modulate → bf16 cast → rotate → quantize in one compiled kernel vs the reference composition."""
    from dvdq_compile.kernels.norm_quant import norm_act_quant
    g = _gen(11)
    x = (torch.randn(2, 2100, k, generator=g) * 3 + 1).to(torch.bfloat16).to(DEV)
    mult = (1 + 0.5 * torch.randn(2, 1, k, generator=g)).to(DEV)
    shift = (0.2 * torch.randn(2, 1, k, generator=g)).to(DEV)
    c, s = norm_act_quant(x, mult, shift, 1e-6, torch.bfloat16, 8, group, 128 if group >= 128 else 64, 3)
    y = quant.norm_modulate(x, mult, shift, 1e-6, torch.bfloat16)
    rc, rs = quant.quantize_act(y, 8, group, 128 if group >= 128 else 64, 3)
    torch.testing.assert_close(s, rs, rtol=2.0**-7, atol=0)
    d = (c.int() - rc.int()).abs()
    assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 2e-3


@pytest.mark.parametrize("expand", [False, True])
@pytest.mark.parametrize("dtype,approx", [(torch.bfloat16, "tanh"), (torch.float16, "none")])
def test_gelu_quant_epilogue(dtype, approx, expand):
    """FFN-up GEMM + GELU → rotate → quantize epilogue, compiled and autotuned (native 16-bit casts, the Markstein
    quotient), vs qlinear_ref → F.gelu → quantize_act on the GPU; ragged M, N a multiple of 128 but not of 256."""
    from dvdq_compile.kernels.gelu_quant import qlinear_gelu_quant
    from .test_gelu_quant import _compare
    g = _gen(5)
    m, n, k = 4133, 1152, 1536
    codes, scales = quant.quantize_act(make_x(m, k, gen=g), 8, 128, 0)
    packed, ws, wz = make_weight(n, k, 4, gen=g)
    bias = torch.randn(n, generator=g).to(dtype)
    args = [t.to(DEV) for t in (codes, scales, packed, ws * 4, wz, bias)]
    c, s = qlinear_gelu_quant(*args, 4, dtype, approx, 8, 128, 128, 9, expand=expand)
    rc, rs = quant.gelu_quant_ref(*args, 4, dtype, approx, 8, 128, 128, 9)
    _compare((m, n, k, 128, 128, 128, 8, 4, dtype), c, s, rc, rs)


@pytest.mark.parametrize("k,group,square", [(1024, 128, False), (1280, 128, False), (1536, 128, False),
                                            (1024, 1024, False), (1536, 1536, True)])
def test_gluon_qlinear_matches_the_triton_kernel(k, group, square):
    """The Gluon kernel (async rescale; kernels/gluon_qlinear.py) gives the Triton int8-native kernel's output to the
    bit and the reference's within its tolerance; ragged M and N (TMA clips the edge tiles), 4 / 10 / 12 groups per
    loop iteration, K = group the per-token path (at its 256x128 tile, and 128x128)."""
    from dvdq_compile.kernels import gluon_qlinear as gql
    m, n = 4133, 776
    x = make_x(m, k, torch.bfloat16, gen=_gen(11)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(n, k, 4, gen=_gen(12)))
    bias = torch.randn(n, generator=_gen(13)).to(torch.bfloat16).to(DEV)
    c, s = quant.quantize_act(x, 8, group)
    assert gql.supported(k, group, True, n) is None
    y_triton = kernels.qlinear(c, s, packed, ws, wz, bias, 4, torch.bfloat16, expand=True)
    o = ql_mod.operands(c, s, packed, ws, wz, bias, 4, True)
    y = torch.empty(m, n, dtype=torch.bfloat16, device=DEV)
    gql.gluon_qlinear(o.a, o.s, o.w, o.ws, o.b, y, o.per_token, gql.PER_TOKEN_TILE_SQUARE if square else None)
    assert torch.equal(y, y_triton)
    assert_out_close(y, quant.qlinear_ref(c, s, packed, ws, wz, bias, 4, torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("sq,skv", [(4133, 4133), (1000, 512)])
def test_attn_quant_bf16_vs_reference(sq, skv):
    """The attention kernel quantizing in its epilogue (kernels/attn_quant.py), bf16 Wan-sized heads (D = 128, group
    and Hadamard block 128) as permuted views, ragged lengths, self- and cross-attention: scales within one bf16 ulp
    of the fp32 reference's, codes within one (the kernel rounds P to bf16 before P·V, as flash kernels do)."""
    from dvdq_compile.kernels.attn_quant import attn_act_quant
    g = _gen(21)
    q, k, v = (torch.randn(1, n, 4, 128, generator=g).to(torch.bfloat16).permute(0, 2, 1, 3)
               for n in (sq, skv, skv))
    c, s = attn_act_quant(q.to(DEV), k.to(DEV), v.to(DEV), None, torch.bfloat16, 8, 128, 128, 5)
    rc, rs = quant.attn_quant_ref(q, k, v, None, torch.bfloat16, 8, 128, 128, 5)
    torch.testing.assert_close(s.cpu(), rs, rtol=2.0**-7, atol=0)
    assert int((c.cpu().int() - rc.int()).abs().max()) <= 1


def _drawn_gemm(m, n, k, group, bias, seed):
    """A drawn W4A8 GEMM on the GPU: its operands (ql_mod.operands, int8-expanded weights) and the Triton int8-native
    kernel's bf16 output at one forced tile (every tile gives the same bits; autotuning each drawn M bucket would
    cost the window)."""
    x = make_x(m, k, torch.bfloat16, gen=_gen(seed)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(n, k, 4, gen=_gen(seed + 1)))
    b = torch.randn(n, generator=_gen(seed + 2)).to(torch.bfloat16).to(DEV) if bias else None
    c, s = quant.quantize_act(x, 8, group)
    cfg = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8}, num_warps=8, num_stages=3)
    y_triton = ql_mod.qlinear(c, s, packed, ws, wz, b, 4, torch.bfloat16, expand=True, config=cfg)
    return ql_mod.operands(c, s, packed, ws, wz, b, 4, True), y_triton


@settings(max_examples=8, deadline=None)
@given(m=st.integers(1, 3000), n8=st.integers(1, 200), kg=st.sampled_from([8, 10, 12, 14, 20]),
       per_token=st.booleans(), square=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gluon_qlinear_property(m, n8, kg, per_token, square, bias, seed):
    """The Gluon kernel on drawn shapes (ragged M down to one row, N any multiple of 8, K = 128·kg so that every
    groups-per-iteration count runs; per-token at both tiles) equals the Triton int8-native kernel bit for bit."""
    from dvdq_compile.kernels import gluon_qlinear as gql
    n, k = 8 * n8, 128 * kg
    group = k if per_token else 128
    assert gql.supported(k, group, True, n) is None
    o, y_triton = _drawn_gemm(m, n, k, group, bias, seed)
    y = torch.empty(m, n, dtype=torch.bfloat16, device=DEV)
    gql.gluon_qlinear(o.a, o.s, o.w, o.ws, o.b if bias else None, y, o.per_token,
                      gql.PER_TOKEN_TILE_SQUARE if per_token and square else None)
    assert torch.equal(y, y_triton)


@pytest.mark.parametrize("k,group,schedule", [(1024, 128, "wide"), (1536, 128, "wide"), (256, 128, "wide"),
                                              (1024, 128, "coop"), (1280, 128, "coop"), (1536, 128, "coop"),
                                              (256, 128, "coop"), (1536, 1536, "coop"), (1536, 128, "pingpong"),
                                              (1536, 1536, "pingpong"), (256, 128, "pingpong")])
def test_gluon_ws_qlinear_matches_the_triton_kernel(k, group, schedule):
    """The warp-specialized Gluon GEMM (kernels/gluon_ws.py: the group-128 dispatch's wide cooperative 128x192
    tile, the cooperative 128x128 one, and ping-pong) gives the Triton int8-native kernel's output to the bit and
    the reference's within its tolerance: ragged M and N (N = 776: not a multiple of any tile; its last wide tile
    holds only the first part), 4 / 10 / 12 / 2 groups per loop iteration, per-token."""
    from dvdq_compile.kernels import gluon_ws as gws
    m, n = 4133, 776
    x = make_x(m, k, torch.bfloat16, gen=_gen(14)).to(DEV)
    packed, ws, wz = (t.to(DEV) for t in make_weight(n, k, 4, gen=_gen(15)))
    bias = torch.randn(n, generator=_gen(16)).to(torch.bfloat16).to(DEV)
    c, s = quant.quantize_act(x, 8, group)
    assert gws.supported(n, k, group, True, torch.bfloat16) is None
    y_triton = kernels.qlinear(c, s, packed, ws, wz, bias, 4, torch.bfloat16, expand=True)
    o = ql_mod.operands(c, s, packed, ws, wz, bias, 4, True)
    y = torch.empty(m, n, dtype=torch.bfloat16, device=DEV)
    gws.ws_qlinear(o.a, o.s, o.w, o.ws, o.b, y, o.per_token, schedule != "pingpong", wide=schedule == "wide")
    assert torch.equal(y, y_triton)
    assert_out_close(y, quant.qlinear_ref(c, s, packed, ws, wz, bias, 4, torch.bfloat16), torch.bfloat16)


@pytest.mark.parametrize("schedule", ["wide", "coop", "pingpong"])
@settings(max_examples=4, deadline=None)
@given(m=st.integers(1, 3000), n8=st.integers(1, 200), kg=st.sampled_from([2, 4, 6, 10, 12, 14]),
       per_token=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gluon_ws_qlinear_property(schedule, m, n8, kg, per_token, bias, seed):
    """The warp-specialized Gluon GEMM on drawn shapes (ragged M down to one row: a cooperative tile with one
    consumer's rows all out of range; N any multiple of 8; every groups-per-iteration count) equals the Triton
    int8-native kernel bit for bit, in all three tiles and schedules."""
    from dvdq_compile.kernels import gluon_ws as gws
    n, k = 8 * n8, 128 * kg
    per_token = per_token and schedule != "wide"     # the wide tile takes group-128 input only
    group = k if per_token else 128
    assert gws.supported(n, k, group, True, torch.bfloat16) is None
    o, y_triton = _drawn_gemm(m, n, k, group, bias, seed)
    y = torch.empty(m, n, dtype=torch.bfloat16, device=DEV)
    gws.ws_qlinear(o.a, o.s, o.w, o.ws, o.b if bias else None, y, o.per_token, schedule != "pingpong",
                   wide=schedule == "wide")
    assert torch.equal(y, y_triton)


@pytest.mark.parametrize("in_group,k,schedule", [(1536, 1536, "coop"), (128, 1536, "coop"), (128, 1280, "coop"),
                                                 (128, 256, "coop"), (256, 256, "coop"), (128, 1536, "pingpong"),
                                                 (1536, 1536, "pingpong")])
def test_gluon_ffn_up_vs_reference(in_group, k, schedule, monkeypatch):
    """The warp-specialized Gluon FFN-up with the GELU → rotate → quantize epilogue (kernels/gluon_ws.py;
    cooperative through the op's own entry point under DVDQ_GLUON=1, ping-pong called directly), per-token and group-128
    input, 12, 10 and 2 groups per K loop iteration, bf16, ragged M, N a multiple of 128 but not of 256 (an odd tile
    count per consumer): the same bounds against qlinear_ref → F.gelu → quantize_act as the Triton epilogue
    kernel's test; how many codes differ from the Triton kernel's is printed (another order of the rotation's fp32
    sums may flip a tie)."""
    from dvdq_compile.kernels import gluon_qlinear as gql
    from dvdq_compile.kernels import gluon_ws as gws
    from dvdq_compile.kernels.tl_common import hadamard_for
    from dvdq_compile.kernels.gelu_quant import qlinear_gelu_quant
    from .test_gelu_quant import _compare
    g = _gen(6)
    m, n, dtype = 4133, 1152, torch.bfloat16
    codes, scales = quant.quantize_act(make_x(m, k, gen=g), 8, in_group, 0)
    packed, ws, wz = make_weight(n, k, 4, gen=g)
    bias = torch.randn(n, generator=g).to(dtype)
    args = [t.to(DEV) for t in (codes, scales, packed, ws * 4, wz, bias)]
    ct, st_ = qlinear_gelu_quant(*args, 4, dtype, "tanh", 8, 128, 128, 9, expand=True)
    monkeypatch.setenv("DVDQ_GLUON", "1")
    assert gql.use_gluon() and gws.supported_gelu(n, k, in_group, True, 128, 128, dtype, "tanh") is None
    if schedule == "pingpong":
        o = ql_mod.operands(*args, 4, True)
        h, _, rscale = hadamard_for(128, 9, torch.empty(0, dtype=dtype, device=DEV))
        c = torch.empty(m, n, dtype=torch.int8, device=DEV)
        s = torch.empty(m, n // 128, dtype=torch.float32, device=DEV)
        gws.ffn_up_gelu_quant(o.a, o.s, o.w, o.ws, o.b, h, c, s, o.per_token, rscale, 127, coop=False)
    else:
        c, s = qlinear_gelu_quant(*args, 4, dtype, "tanh", 8, 128, 128, 9, expand=True)
    rc, rs = quant.gelu_quant_ref(*args, 4, dtype, "tanh", 8, 128, 128, 9)
    _compare((m, n, k, in_group, 128, 128, 8, 4, dtype), c, s, rc, rs)
    print("codes differing from the Triton kernel's:", float((c != ct).float().mean()),
          "scales:", float((s != st_).float().mean()))


@pytest.mark.parametrize("schedule", ["coop", "pingpong"])
@settings(max_examples=4, deadline=None)
@given(m=st.integers(1, 2000), n128=st.integers(1, 24), kg=st.sampled_from([2, 4, 6, 10, 12, 14]),
       per_token=st.booleans(), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_gluon_ffn_up_property(schedule, m, n128, kg, per_token, bias, seed):
    """The Gluon FFN-up on drawn shapes (ragged M down to one row, so a program may hold one tile and consumer 1
    none; N any multiple of 128; K = 128·kg so every groups-per-iteration count runs) against the reference, with
    the Triton epilogue kernel's bounds."""
    from dvdq_compile.kernels import gluon_ws as gws
    from dvdq_compile.kernels import qlinear as ql_mod
    from dvdq_compile.kernels.tl_common import hadamard_for
    from .test_gelu_quant import _compare
    n, k, dtype = 128 * n128, 128 * kg, torch.bfloat16
    group = k if per_token else 128
    codes, scales = quant.quantize_act(make_x(m, k, gen=_gen(seed)), 8, group, 0)
    packed, ws, wz = make_weight(n, k, 4, gen=_gen(seed + 1))
    b = torch.randn(n, generator=_gen(seed + 2)).to(dtype) if bias else None
    args = [t.to(DEV) if t is not None else None for t in (codes, scales, packed, ws * 4, wz, b)]
    o = ql_mod.operands(*args, 4, True)
    h, _, rscale = hadamard_for(128, 9, torch.empty(0, dtype=dtype, device=DEV))
    c = torch.empty(m, n, dtype=torch.int8, device=DEV)
    s = torch.empty(m, n // 128, dtype=torch.float32, device=DEV)
    assert gws.supported_gelu(n, k, group, True, 128, 128, dtype, "tanh") is None
    gws.ffn_up_gelu_quant(o.a, o.s, o.w, o.ws, o.b if bias else None, h, c, s, o.per_token, rscale, 127,
                          schedule == "coop")
    rc, rs = quant.gelu_quant_ref(*args, 4, dtype, "tanh", 8, 128, 128, 9)
    _compare((m, n, k, group, 128, 128, 8, 4, dtype), c, s, rc, rs)


def test_gluon_ffn_up_special_groups(monkeypatch):
    """Rows whose FFN-up output is all zero (bias 0, zero codes) give scale 0 and codes 0, never NaN; the kernel's
    NaN-propagating absmax keeps a NaN scale where the reference's has one (a NaN activation scale)."""
    from dvdq_compile.kernels.gelu_quant import qlinear_gelu_quant
    g = _gen(7)
    m, n, k, dtype = 300, 256, 1536, torch.bfloat16
    codes, scales = quant.quantize_act(make_x(m, k, gen=g), 8, 128, 0)
    codes[:5] = 0
    scales[5, 3] = float("nan")
    packed, ws, wz = make_weight(n, k, 4, gen=g)
    args = [t.to(DEV) for t in (codes, scales, packed, ws, wz)]
    monkeypatch.setenv("DVDQ_GLUON", "1")
    c, s = qlinear_gelu_quant(*args, None, 4, dtype, "tanh", 8, 128, 128, 9, expand=True)
    rc, rs = quant.gelu_quant_ref(*args, None, 4, dtype, "tanh", 8, 128, 128, 9)
    assert torch.equal(s[:5].cpu(), torch.zeros(5, n // 128)) and not c[:5].any()
    assert torch.equal(s.cpu().isnan(), rs.cpu().isnan()) and not c[5].any()