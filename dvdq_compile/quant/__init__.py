"""Plain-PyTorch reference numerics: the specification every kernel is tested against (docs/numerics.md)."""
from .act import dequantize_act, fake_quant_per_channel, qmax_for, quantize_act
from .attn import attn_out, attn_quant_ref, attention
from .bgr import bgr, bgr_rows
from .gelu import gelu_quant_ref
from .hadamard import NO_SIGNS, hadamard_matrix, rotate
from .linear import dequant_linear_ref, int_partials, qlinear_ref
from .minmax import dequantize, minmax
from .norm import norm_modulate
from .offset import offset_qweight
from .pack import pack, pack_int3, pack_int4, unpack, unpack_int3, unpack_int4
from .qweight import QuantizedWeight, WeightSpec, quantize_weight, quantized_bytes
from .smooth import smooth_factors, weight_absmax

__all__ = [
    "NO_SIGNS", "QuantizedWeight", "WeightSpec", "attention", "attn_out", "attn_quant_ref", "bgr", "bgr_rows",
    "dequant_linear_ref", "dequantize",
    "dequantize_act", "fake_quant_per_channel", "gelu_quant_ref", "hadamard_matrix", "int_partials", "minmax", "norm_modulate", "offset_qweight",
    "pack", "pack_int3",
    "pack_int4", "qlinear_ref", "qmax_for", "quantize_act", "quantize_weight", "quantized_bytes", "rotate",
    "smooth_factors", "unpack", "unpack_int3", "unpack_int4", "weight_absmax",
]
