"""Run-time source of the extras inputs (``passes/extras.py``): per model, the tensors of its own artifact.

Two experts that share one compiled graph each get their own artifact: at a model's first call the artifact whose
per-layer weight fingerprints match that model's weights is chosen (no match: a clear error) and its tensors are
moved to the model's device once and reused; an offset weight (qvdit) is quantized from the model's own weight
then (before ``free_weights`` releases it). A model whose weights are edited in place afterwards must be
recompiled and recalibrated (its artifact describes the old weights).
"""
from __future__ import annotations

import torch

from ..identity import IdentityMap
from ..passes.extras import ExtrasPlan, model_tensors
from ..quant.offset import offset_qweight
from .free import require_storage


class ExtrasSource:
    def __init__(self, plan: ExtrasPlan, weights):
        self.plan = plan
        # weight input position -> layer name, for the weights that come precomputed from the artifact
        self.art_weights = {i: w.layers[0] for i, w in enumerate(weights) if w.source == "artifact"}
        self.layer_params = {w.layers[0]: w.arg_index for w in weights if w.layers[0] in plan.sites}
        # first parameter of a model -> (weight triples by position, extra inputs, its artifact)
        self._models = IdentityMap()

    def _pick(self, args):
        for cal in self.plan.artifacts:
            try:
                for name, idx in self.layer_params.items():
                    cal.check(name, args[idx])
            except ValueError:
                continue
            return cal
        names = [c.meta.get("path", f"artifact #{i}") for i, c in enumerate(self.plan.artifacts)]
        raise ValueError(f"dvdquant option artifact: a model running through this compiled graph matches none of "
                         f"the artifacts {names} (per-layer weight fingerprints differ): calibrate this model "
                         "(e.g. the other expert) and add its artifact to options['artifact']")

    def tensors(self, args, key) -> tuple[dict[int, tuple], list[torch.Tensor]]:
        return self._entry(args, key)[:2]

    def artifact(self, args, key):
        """The artifact matched to the model whose first parameter is ``key`` (chosen once, at its first call)."""
        return self._entry(args, key)[2]

    def _entry(self, args, key):
        got = self._models.get(key)
        if got is None:
            cal = self._pick(args)
            dev = args[next(iter(self.layer_params.values()))].device
            triples = {}
            for pos, name in self.art_weights.items():
                ex = cal.layer_extras(name)
                if ex.qweight is not None:
                    triples[pos] = tuple(t.to(dev).contiguous() for t in ex.qweight)
                else:  # offset weight: MinMax grid of this model's W, codes of W + (B A)ᵀ
                    w = args[self.layer_params[name]]
                    require_storage(w, name, "quantizing it with its artifact's weight offset")
                    b_a = ex.weight_offset or (None, None)
                    triples[pos] = offset_qweight(w, *b_a, ex.weight_bits)
            got = (triples, model_tensors(self.plan, cal, dev), cal)
            self._models[key] = got
        return got
