"""Artifacts: what calibrated and trained recipes hand the backend, and how the backend checks and reads them.

A leaf of the package: it imports only the numerics and the state that records released weights' fingerprints.
``Artifact`` is the interface (``check``, ``layer_extras``, ``bins``, ``groups``); ``Calibration`` implements it
(SmoothQuant statistics); recipes wrap or define their own (``recipes/svdquant_gptq_ts.py``,
``qvdit/artifact.py``).
"""
from .bins import NUM_TRAIN_TIMESTEPS, TimestepBins
from .calibration import FORMAT, Calibration, LayerStats, as_calibration
from .extras import Artifact, Extras, label, matches
from .fingerprint import (
           check_fingerprint,
           checksum,
           model_fingerprint,
           weight_fingerprint,
)
from .manifest import check_intact, read_artifact, read_manifest, write_artifact

__all__ = ["Artifact", "Calibration", "Extras", "FORMAT", "LayerStats", "NUM_TRAIN_TIMESTEPS", "TimestepBins",
           "as_calibration", "check_fingerprint", "check_intact", "checksum", "label", "matches",
           "model_fingerprint", "read_artifact", "read_manifest", "weight_fingerprint", "write_artifact"]
