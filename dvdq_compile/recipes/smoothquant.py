"""Recipe ``smoothquant``: SmoothQuant (docs/algorithms.md §5): calibrated per-channel smoothing, MinMax weights,
per-token activations, no rotation, A8. Needs ``options["artifact"]``: a calibration (``dvdq_compile.calibrate``)
or its path.

Linears that read one activation share one factor ``s = max|X_j|^α / max|W_:,j|^(1−α)``: the graph computes
``x·diag(s)⁻¹`` once (a graph constant and one pointwise op) and quantizes it, the weights are quantized as
``W·diag(s)``. The calibration's weight fingerprints must match every model that runs the compiled graph.
"""
from ..artifacts import Calibration, as_calibration
from ..config import register_recipe
from ..errors import OptionError
from ..passes.plan import Products
from ..passes.smooth import plan_smoothing
from .base import Option, Recipe, is_number


class SmoothQuant(Recipe):
    name = "smoothquant"
    summary = ("SmoothQuant: calibrated per-channel smoothing (needs options['artifact']) + MinMax weights + "
               "per-token activations, no rotation")
    defaults = {"weight_method": "minmax", "rotate": False, "act_scale": "token", "act_bits": 8}
    options = {"smooth_alpha": Option(0.5, "a float in [0, 1]: SmoothQuant migration strength alpha",
                                      is_number(0.0, 1.0))}
    takes_artifact = True
    artifact_types = (Calibration,)
    artifact_help = ("calibration statistics: pass options={'artifact': dvdq_compile.calibrate(model, run_fn)} (or "
                     "the path of a saved calibration)")

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if isinstance(cfg.artifact, tuple):
            raise OptionError("dvdquant recipe 'smoothquant' takes one artifact, not a list (SmoothQuant's factors "
                              "are graph constants; use recipe svdquant_gptq_ts for per-expert artifacts)")
        if cfg.act_scale == "channel":
            raise OptionError("dvdquant recipe 'smoothquant' cannot use act_scale='channel' (the per-channel "
                              "fake-quant already scales every channel on its own)")

    def load_artifacts(self, cfg) -> list:
        return [as_calibration(cfg.artifact)]

    def plan(self, ctx) -> Products:
        cal = ctx.artifacts[0]
        return Products(smoothing=plan_smoothing(ctx, cal, ctx.cfg.option("smooth_alpha")), checks=[cal])


register_recipe(SmoothQuant())
