import math

import pytest

from dvdq_compile import QuantConfig
from dvdq_compile.config import recipe_names as names


def test_defaults_are_dvdquant():
    cfg = QuantConfig.from_options(None)
    assert (cfg.weight_bits, cfg.act_bits, cfg.group, cfg.weight_method, cfg.rotate) == (4, "auto", 128, "bgr", True)
    assert cfg.act_variants == (4, 8) and cfg.switching


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dvdquant option\(s\) \['wbits'\]") as e:
        QuantConfig.from_options({"wbits": 4})
    assert "weight_bits: one of (3, 4, 8)" in str(e.value) and "act_scale:" in str(e.value)


@pytest.mark.parametrize("opt,val,msg", [
    ("weight_bits", 2, r"weight_bits=2 is not allowed; expected one of \(3, 4, 8\)"),
    ("weight_bits", "4", "weight_bits='4'"),
    ("weight_bits", True, "weight_bits=True"),
    ("act_bits", 12, "act_bits=12"),
    ("act_bits", "A4", "act_bits='A4'"),
    ("group", 96, r"group=96 is not allowed; expected one of \(64, 128, 256\)"),
    ("delta", 0, "delta=0"),
    ("delta", -0.1, "delta=-0.1"),
    ("delta", math.nan, "delta=nan"),
    ("delta", math.inf, "delta=inf"),
    ("act_scale", "tensor", "act_scale='tensor'"),
    ("kernels", "cuda", "kernels='cuda'"),
    ("lowering", "aot", "lowering='aot'"),
    ("rotate", 1, "rotate=1"),
    ("exclude", [1], "exclude=\\[1\\]"),
    ("weight_group", 100, "weight_group=100"),
    ("min_tokens", -1, "min_tokens=-1"),
    ("bgr_max_shrink", 1.0, "bgr_max_shrink=1.0"),
    ("recipe", "gptq", "recipe='gptq' is not allowed"),
])
def test_bad_option_values(opt, val, msg):
    with pytest.raises(ValueError, match=msg):
        QuantConfig.from_options({opt: val})


def test_low_must_be_below_high():
    with pytest.raises(ValueError, match="act_bits_low=8 must be below act_bits_high=4"):
        QuantConfig.from_options({"act_bits_low": 8, "act_bits_high": 4})


def test_bad_block_pattern_regex():
    with pytest.raises(ValueError, match="block_pattern='\\(' is not a valid regular expression"):
        QuantConfig.from_options({"block_pattern": "("})


def test_channel_mode_needs_reference_kernels():
    with pytest.raises(ValueError, match="reference path only"):
        QuantConfig.from_options({"act_scale": "channel", "kernels": "triton"})


def test_recipes_set_defaults_and_user_overrides_win():
    assert {"dvdquant", "minmax", "quarot"} <= set(names())
    mm = QuantConfig.from_options({"recipe": "minmax"})
    assert (mm.weight_method, mm.rotate, mm.act_scale, mm.act_bits) == ("minmax", False, "token", 8)
    q4 = QuantConfig.from_options({"recipe": "quarot", "act_bits": 4})
    assert (q4.rotate, q4.act_bits) == (True, 4)


@pytest.mark.parametrize("option", ["exclude", "include", "weight_only"])
def test_pattern_option_given_a_string_is_an_error(option):
    # iterating the string would have given one pattern per character
    with pytest.raises(ValueError, match=rf"{option}='blocks\.0\.\*' is a string; expected a list"):
        QuantConfig.from_options({option: "blocks.0.*"})
    assert getattr(QuantConfig.from_options({option: ["blocks.0.*"]}), option) == ("blocks.0.*",)
