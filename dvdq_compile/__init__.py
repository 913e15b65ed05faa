"""dvdq_compile: DVD-Quant as a torch.compile backend (``backend="dvdquant"``).

    model = torch.compile(model, backend="dvdquant")                              # W4, δ-switched A4/A8
    model = torch.compile(model, backend="dvdquant", options={"act_bits": 8})     # fixed W4A8
    dvdq_compile.report(model)                                                    # per-layer compile report
"""
from .api import controller, report, requantize, share_controller
from .backend import dvdquant
from .config import QuantConfig

__all__ = ["QuantConfig", "controller", "dvdquant", "report", "requantize", "share_controller"]
__version__ = "0.1.0"
