"""The Gluon W4A8 kernel's host side on the CPU machine (kernels/gluon_qlinear.py).

The kernel itself only runs on a GPU (Gluon has no interpreter): ``test_gpu.py`` compares it bit for bit with the
Triton kernel, ``test_aot_sm90.py`` compiles it for sm_90 here (no spill, wgmmas kept in flight), and
``bench/sass.py`` models its loop."""
import pytest
import torch

from dvdq_compile import quant
from dvdq_compile.kernels import gluon_qlinear as gql
from dvdq_compile.kernels import launch as kernels

from .helpers import assert_out_close, make_weight, make_x


@pytest.mark.parametrize("k,ga,expanded,n,dtype,why", [
    (1536, 128, False, 1536, torch.bfloat16, "int8-expanded"),
    (1600, 1600, True, 1536, torch.bfloat16, "not a multiple of 128"),
    (1536, 64, True, 1536, torch.bfloat16, "activation group 64"),
    (1408, 128, True, 1536, torch.bfloat16, "odd number of 128-groups"),
    (1536, 128, True, 777, torch.bfloat16, "N=777"),
    (1536, 128, True, 1536, torch.int8, "output dtype"),
    (768, 128, True, 1536, torch.bfloat16, "fewer K steps than the operand ring"),
])
def test_supported_names_what_it_cannot_run(k, ga, expanded, n, dtype, why):
    assert why in gql.supported(k, ga, expanded, n, dtype)


@pytest.mark.parametrize("k,ga", [(1536, 128), (8960, 128), (5120, 5120), (13824, 128)])
def test_supported_on_the_wan_shapes(k, ga):
    assert gql.supported(k, ga, True, 1536) is None


@pytest.mark.parametrize("groups,unroll", [(12, 12), (70, 10), (40, 10), (108, 12), (8, 4), (14, 2), (18, 6)])
def test_unroll_divides_the_groups(groups, unroll):
    assert gql.unroll_for(groups) == unroll and groups % unroll == 0


def test_tiles_and_signature_types():
    assert gql.PER_TOKEN_TILE in gql.TILES and gql.PER_TOKEN_TILE_SQUARE in gql.TILES
    assert all(t[4] in gql.UNROLLS for t in gql.GROUPED_TILES)
    assert gql.desc_type(128).startswith("tensordesc<i8[128, 128],NVMMASharedLayout(")
    assert gql.desc_type(128, 64, torch.bfloat16).startswith("tensordesc<bf16[128, 64],")


def test_dispatch_stays_on_triton_without_a_gpu(monkeypatch):
    """DVDQ_GLUON=1 asks for the Gluon kernel; without CUDA the call runs the Triton kernel and gives its numbers."""
    monkeypatch.setenv("DVDQ_GLUON", "1")
    assert not gql.use_gluon()
    x = make_x(70, 256, gen=torch.Generator().manual_seed(3))
    packed, ws, wz = make_weight(48, 256, 4, gen=torch.Generator().manual_seed(4))
    c, s = quant.quantize_act(x, 8, 128)
    y = kernels.qlinear(c, s, packed, ws, wz, None, 4, torch.float32, expand=True)
    assert_out_close(y, quant.qlinear_ref(c, s, packed, ws, wz, None, 4, torch.float32), torch.float32)


def test_forced_tile_must_match_the_scales():
    """A forced tile is one of the kernel's compiled tiles for that kind of activation scale (checked before any
    CUDA call)."""
    x = torch.empty(1, 1024, dtype=torch.int8)
    with pytest.raises(ValueError, match="tile"):
        gql.gluon_qlinear(x, x, x, x, None, x, per_token=False, tile=gql.PER_TOKEN_TILE_SQUARE)
    with pytest.raises(ValueError, match="tile"):
        gql.gluon_qlinear(x, x, x, x, None, x, per_token=True, tile=(64, 64, 4, 2, 1))
