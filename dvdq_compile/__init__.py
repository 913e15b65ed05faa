"""dvdq_compile: DVD-Quant as a torch.compile backend (``backend="dvdquant"``).

    model = torch.compile(model, backend="dvdquant")                              # W4, δ-switched A4/A8
    model = torch.compile(model, backend="dvdquant", options={"act_bits": 8})     # fixed W4A8
    dvdq_compile.report(model)                                                    # per-layer compile report
    cal = dvdq_compile.calibrate(model, run_fn)                                   # calibrated recipes
    model = torch.compile(model, backend="dvdquant", options={"recipe": "smoothquant", "artifact": cal})
"""
from .api import controller, freed_weights, report, requantize, restore_weights, share_controller
from .backend import dvdquant
from .calibrate import Calibration, calibrate
from .config import QuantConfig
from .errors import FreedWeightError, OptionError
from .recipes.svdquant_gptq_ts import SVDQuantTSConfig, calibrate_svdquant_ts

__all__ = ["Calibration", "FreedWeightError", "OptionError", "QuantConfig", "SVDQuantTSConfig", "calibrate",
           "calibrate_svdquant_ts", "controller", "dvdquant", "freed_weights", "report", "requantize",
           "restore_weights", "share_controller"]
__version__ = "0.1.0"
