"""The warp-specialized Gluon W4A8 GEMM (kernels/gluon_ws.py) on the CPU machine: what it refuses, its register and
shared-memory budgets, the dispatch without a GPU, and the arithmetic identities the FFN-up's epilogue relies on.

The kernel itself only runs on a GPU (Gluon has no interpreter): ``test_gpu.py`` compares it with the reference,
``test_aot_sm90.py`` compiles it for sm_90 here (no spill, wgmmas in flight, each partition within its registers),
and ``bench/sass.py`` models it."""
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dvdq_compile import quant
from dvdq_compile.kernels import gluon_ws as gws
from dvdq_compile.kernels import gluon_qlinear as gql
from dvdq_compile.kernels import launch as kernels
from dvdq_compile.kernels.gelu_quant import qlinear_gelu_quant

from .helpers import assert_out_close, make_weight, make_x

WAN = dict(n=8960, k=1536, ga=128, expanded=True, group=128, rotate=128, out_dtype=torch.bfloat16,
           approximate="tanh")


@pytest.mark.parametrize("kw,why", [
    ({"approximate": "none"}, "tanh-GELU in 16 bits"),
    ({"out_dtype": torch.float32}, "tanh-GELU in 16 bits"),
    ({"group": 64, "rotate": 64}, "group 64"),
    ({"n": 1536 + 64}, "N=1600"),
    ({"expanded": False}, "int8-expanded"),
    ({"k": 1600, "ga": 1600}, "not a multiple of 128"),
    ({"ga": 64}, "activation group 64"),
    ({"k": 1408}, "odd number of 128-groups"),
])
def test_supported_gelu_names_what_it_cannot_run(kw, why):
    assert gws.supported_gelu(**WAN) is None
    assert why in gws.supported_gelu(**(WAN | kw))


@pytest.mark.parametrize("n,k,ga", [(8960, 1536, 128), (13824, 5120, 128), (8960, 1536, 1536), (13824, 5120, 5120),
                                    (256, 256, 128)])
def test_supported_on_the_wan_ffn_ups_and_short_k(n, k, ga):
    """Both Wan FFN-ups, either input scale; and K = 256: the loader is its own warp, so (unlike the single-warpgroup
    GEMM's in-place refills) the ring needs no minimum K."""
    assert gws.supported_gelu(**(WAN | dict(n=n, k=k, ga=ga))) is None


@pytest.mark.parametrize("kw,why", [
    ({"out_dtype": torch.float32}, "only bf16 or fp16"),
    ({"n": 1540}, "N=1540"),
    ({"expanded": False}, "int8-expanded"),
    ({"k": 1408}, "odd number of 128-groups"),
])
def test_supported_gemm_names_what_it_cannot_run(kw, why):
    base = dict(n=1536, k=1536, ga=128, expanded=True, out_dtype=torch.bfloat16)
    assert gws.supported(**base) is None and gws.supported(**(base | dict(n=776, k=256))) is None
    assert why in gws.supported(**(base | kw))


@pytest.mark.parametrize("gelu,coop", gws.MODES)
def test_register_and_shared_memory_budget(gelu, coop):
    """setmaxnreg can only move what the launch allocated: 12 warps at LAUNCH_REGS hold the two consumer warpgroups'
    and the loader warpgroup's budgets (a budget is per warpgroup, multiples of 8, 24-256); in every mode the ring,
    the two output tiles and the ±1 block fit the 227 KiB a CTA may use, with at least 4 slots."""
    warpgroups = 3
    assert warpgroups * 4 * 32 * gws.LAUNCH_REGS <= 65536
    assert 2 * gws.CONSUMER_REGS + gws.LOADER_REGS <= warpgroups * gws.LAUNCH_REGS
    assert all(r % 8 == 0 and 24 <= r <= 256 for r in (gws.CONSUMER_REGS, gws.LOADER_REGS))
    sig, const = gws.offline_spec(12, gelu, coop)
    rows = gws.BLOCK_M * (2 if coop else 1)
    ring = const["STAGES"] * (rows + gws.BLOCK_N) * gql.BLOCK_K
    smem = ring + 2 * gws.BLOCK_M * gws.BLOCK_N * (1 if gelu else 2) + (gws.BLOCK_N ** 2 * 2 if gelu else 0) + \
        2 * const["STAGES"] * 8
    assert const["STAGES"] >= 4 and smem <= 227 * 1024, smem
    assert sig["a_desc"].startswith(f"tensordesc<i8[{rows}, 128],")
    assert sig["c_desc"].startswith(f"tensordesc<{'i8' if gelu else 'bf16'}[64, 128],")
    assert const["num_warps"] == gws.CONSUMER_WARPS and const["UNROLL"] == 12
    assert (const["GELU"], const["COOP"]) == (gelu, coop) and set(gws.UNROLLS) == {1, *gql.UNROLLS}


def test_wide_tile_budget_and_refusals():
    """The wide cooperative tile (128 x 192 as 128 + 64 weight rows and output columns): its ring of 4+ slots and
    both parts' output tiles fit 227 KiB; it runs group-128 input cooperatively only, and says so otherwise."""
    sig, const = gws.offline_spec(1, False, True, wide=True)
    bn = gws.BLOCK_N + gws.BLOCK_N2
    smem = const["STAGES"] * (2 * gws.BLOCK_M + bn) * gql.BLOCK_K + 2 * gws.BLOCK_M * bn * 2 + 2 * const["STAGES"] * 8
    assert const["STAGES"] >= 4 and smem <= 227 * 1024 and const["SPLIT"] and not const["PER_TOKEN"], smem
    assert sig["w_desc"].startswith("tensordesc<i8[128, 128],") and sig["w2_desc"].startswith("tensordesc<i8[64, 128],")
    assert sig["c2_desc"].startswith("tensordesc<bf16[64, 64],")
    t = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="wide 128x192 tile runs group-128 input cooperatively"):
        gws.ws_qlinear(t, t, t, t, None, t, True, wide=True)
    with pytest.raises(ValueError, match="coop=False"):
        gws.ws_qlinear(t, t, t, t, None, t, False, coop=False, wide=True)


def test_dispatch_stays_on_triton_without_a_gpu(monkeypatch):
    """DVDQ_GLUON=1 asks for the Gluon kernel; without CUDA qlinear_gelu_quant runs the Triton epilogue kernel and
    gives its numbers."""
    g = torch.Generator().manual_seed(5)
    codes, scales = quant.quantize_act(make_x(37, 256, gen=g), 8, 128, 0)
    packed, ws, wz = make_weight(128, 256, 4, gen=g)
    args = (codes, scales, packed, ws, wz, None, 4, torch.bfloat16, "tanh", 8, 128, 128, 3)
    c0, s0 = qlinear_gelu_quant(*args, expand=True)
    monkeypatch.setenv("DVDQ_GLUON", "1")
    assert not gql.use_gluon()
    c1, s1 = qlinear_gelu_quant(*args, expand=True)
    assert torch.equal(c0, c1) and torch.equal(s0, s1)


@pytest.mark.parametrize("k,per_token,out_dtype,kernel", [
    (256, False, torch.float16, "ws"),           # group 128: the cooperative warp-specialized kernel, wide tile
    (1024, True, torch.float16, "pair"),         # per-token: gluon_qlinear's 256x128 tile
    (1024, False, torch.float32, "pair"),        # an fp32 output the warp-specialized kernel does not store
    # per-token with fewer K steps than gluon_qlinear's ring, and never the group-128 path (Triton's plan runs a
    # per-row scale over a K of one dot block, 256 in the interpreter, as one group)
    (256, True, torch.float16, "triton"),
    (128, True, torch.float16, "triton"),
])
def test_dispatch_routes_each_call_to_its_gluon_kernel(k, per_token, out_dtype, kernel, monkeypatch):
    """Under DVDQ_GLUON=1 on a GPU (use_gluon stubbed true here, the kernels replaced by recorders) kernels/qlinear.py
    sends each call to the kernel the design says, and what neither Gluon kernel takes to the Triton kernel. (fp16
    outputs: under the interpreter a bf16 output is computed in an fp32 buffer, tl_common.output_buffer.)"""
    calls = []
    monkeypatch.setattr(gql, "use_gluon", lambda: True)
    monkeypatch.setattr(gws, "ws_qlinear", lambda *a, **kw: calls.append(("ws", a[6])) if kw == {"wide": True}
                        else calls.append(("ws other tile", kw)))
    monkeypatch.setattr(gql, "gluon_qlinear", lambda *a, **kw: calls.append(("pair", a[6])))
    g = torch.Generator().manual_seed(6)
    codes, scales = quant.quantize_act(make_x(8, k, gen=g), 8, k if per_token else 128, 0)
    packed, ws, wz = make_weight(64, k, 4, gen=g)
    y = kernels.qlinear(codes, scales, packed, ws, wz, None, 4, out_dtype, expand=True)
    assert calls == ([] if kernel == "triton" else [(kernel, per_token)])
    if kernel == "triton":   # the Triton kernel ran: the reference's numbers
        assert_out_close(y, quant.qlinear_ref(codes, scales, packed, ws, wz, None, 4, out_dtype), out_dtype)


def test_ffn_up_dispatch_runs_the_cooperative_kernel(monkeypatch):
    """Under DVDQ_GLUON=1 on a GPU (stubbed as above) qlinear_gelu_quant hands a call the warp-specialized kernel
    takes to it, in its default schedule (cooperative: L2 bounds the FFN-up, and 128x128 tiles read the fewest L2
    bytes), with group-128 input and qmax of 8 bits; a call it refuses (erf-GELU) stays on the Triton epilogue
    kernel."""
    assert inspect.signature(gws.ffn_up_gelu_quant).parameters["coop"].default is True
    calls = []
    monkeypatch.setattr(gql, "use_gluon", lambda: True)
    monkeypatch.setattr(gws, "ffn_up_gelu_quant", lambda *a, **kw: calls.append((a[8], a[10], kw)))
    g = torch.Generator().manual_seed(7)
    codes, scales = quant.quantize_act(make_x(8, 256, gen=g), 8, 128, 0)
    packed, ws, wz = make_weight(128, 256, 4, gen=g)
    qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.bfloat16, "tanh", 8, 128, 128, 3, expand=True)
    assert calls == [(False, 127, {})]
    qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.bfloat16, "none", 8, 128, 128, 3, expand=True)
    assert len(calls) == 1
    # one scale per row over K = 256 (one dot block in the interpreter: the Triton plan's one group), per-token
    codes, scales = quant.quantize_act(make_x(8, 256, gen=g), 8, 256, 0)
    qlinear_gelu_quant(codes, scales, packed, ws, wz, None, 4, torch.bfloat16, "tanh", 8, 128, 128, 3, expand=True)
    assert calls[1] == (True, 127, {})


def _epilogue_codes(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The epilogue's quantizer as _gelu_codes computes it, in fp32 torch ops (each correctly rounded, as the
    kernel's Markstein quotient is): s = RN(absmax / qmax), t = RN(RN(x / s) + 1.5·2^23) clamped to 1.5·2^23 ±
    qmax, the code the low byte of t's bits, 0 where s is not finite or not > 0."""
    s = x.abs().amax(dim=-1, keepdim=True) / qmax
    t = (x / s + 12582912.0).clamp(12582912.0 - qmax, 12582912.0 + qmax)
    ok = torch.isfinite(s) & (s > 0)
    c = torch.where(ok, t.view(torch.int32), 0).to(torch.int8)   # int32 → int8 keeps the low byte
    return c, s.squeeze(-1)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([127, 7]),
       st.sampled_from([1e-43, 1e-38, 1e-30, 1e-12, 1.0, 3e4, 1e30]))
def test_quantizer_identities_the_epilogue_relies_on(seed, qmax, magnitude):
    """The Gluon epilogue reads the code from the bits of the clamped rounding sum instead of rounding, clamping
    and converting: the same codes on fresh random groups of every magnitude, subnormal scales included (where
    the clamp binds). Independent reference: quantize_act's round-half-even and clamp."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 128, generator=g) * magnitude
    x[::7] *= 1e3    # groups with one large outlier
    x[3, 5] = x[3].abs().max() * 1.0000001    # the max element itself
    c, s = _epilogue_codes(x, qmax)
    ref = torch.round(x / s[:, None]).clamp(-qmax, qmax).to(torch.int8)
    assert torch.equal(c, ref)
    assert int(c.abs().max()) == qmax


def test_quantizer_identities_on_special_groups():
    """All-zero group: scale 0, codes 0 (never NaN); a NaN or an infinity in a group: codes 0, the scale NaN or inf
    (torch's amax keeps the NaN; the kernel's max.NaN reduction does the same)."""
    x = torch.zeros(3, 128)
    x[1, 3] = float("nan")
    x[2, 9] = float("inf")
    x[1:, 10] = 2.0
    c, s = _epilogue_codes(x, 127)
    assert torch.equal(c, torch.zeros_like(c)) and s[0] == 0 and s[1].isnan() and s[2].isinf()
