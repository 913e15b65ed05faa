"""Recipe ``qvdit``: Q-VDiT's trained estimator through the backend (docs/algorithms.md §8).

Per quantized linear, the artifact (``python -m dvdq_compile.qvdit.train``, one per expert) holds a weight offset
folded into the codes at load (MinMax grid of the model's own W, codes of ``W + (B A)ᵀ``), a rank-1 branch on the
quantized activation, and the layer's bits (the faithful setting keeps the MLP at W8A8, text K/V weight-only).
Needs unrotated MinMax weights and symmetric per-token activations at fixed bits: what the estimator was trained on.
"""
from ..artifacts import Calibration
from ..config import register_recipe
from ..errors import OptionError
from ..passes.extras import plan_extras
from ..passes.plan import Products
from ..qvdit.artifact import QVDiTArtifact
from .base import Recipe


class QVDiT(Recipe):
    name = "qvdit"
    summary = ("Q-VDiT: TQE (learned weight offset + rank-1 correction) distilled with TMD; MinMax W3 weights, "
               "per-token A6 activations, per-layer bits from the artifact (faithful: MLP W8A8; needs "
               "options['artifact'] from python -m dvdq_compile.qvdit.train)")
    defaults = {"weight_method": "minmax", "rotate": False, "act_scale": "token", "weight_bits": 3, "act_bits": 6}
    takes_artifact = True
    artifact_types = (QVDiTArtifact, Calibration)  # a Calibration is refused at load with the reason
    artifact_help = ("its artifact(s): pass options={'artifact': [path_expert_1, ...]} (python -m "
                     "dvdq_compile.qvdit.train writes them), one per expert")

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if cfg.rotate or cfg.act_scale != "token" or cfg.act_bits == "auto" or cfg.weight_method != "minmax":
            raise OptionError("dvdquant recipe 'qvdit' needs rotate=False, act_scale='token', "
                              "weight_method='minmax' and fixed act_bits (got "
                              f"rotate={cfg.rotate}, act_scale={cfg.act_scale!r}, "
                              f"weight_method={cfg.weight_method!r}, act_bits={cfg.act_bits!r}): the estimator was "
                              "trained on unrotated MinMax weights and symmetric per-token activations at fixed "
                              "bits")

    def load_artifacts(self, cfg) -> list:
        out = []
        for a in cfg.artifacts:
            if isinstance(a, Calibration):
                raise OptionError("dvdquant recipe 'qvdit' takes qvdit artifacts (python -m dvdq_compile.qvdit.train, "
                                  "QVDiTArtifact.save), got a calibration (made by dvdq_compile.calibrate*)")
            if not isinstance(a, QVDiTArtifact):
                if not isinstance(a, str) and not hasattr(a, "__fspath__"):
                    raise OptionError(f"dvdquant recipe 'qvdit': option artifact must be a qvdit artifact or its "
                                      f"path, got {type(a).__name__}")
                a = QVDiTArtifact.load(a)
            c = a.cfg
            where = a.meta.get("path", "(in memory)")
            if (c.weight_bits, c.act_bits) != (cfg.weight_bits, cfg.act_bits):
                raise OptionError(f"dvdquant options weight_bits={cfg.weight_bits}, act_bits={cfg.act_bits} differ "
                                  f"from the qvdit artifact {where} trained at {c.label}; its estimator only holds "
                                  f"at those bits: pass options={{'weight_bits': {c.weight_bits}, 'act_bits': "
                                  f"{c.act_bits}}}")
            if not c.act_sym:
                raise OptionError(f"dvdquant recipe 'qvdit': the artifact {where} was trained with asymmetric "
                                  "activations (act_sym=False), which the integer kernels do not run")
            out.append(a)
        return out

    def plan(self, ctx) -> Products:
        return Products(extras=plan_extras(ctx))


register_recipe(QVDiT())
