"""Timestep bins: recipes whose activation handling depends on the denoising step keep one value per bin."""
from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class TimestepBins:
    """Timestep bins by their ascending inner edges: bin i holds ``edges[i-1] <= t < edges[i]`` (``len(edges)+1``
    bins; no edges = one bin). ``TimestepBins.uniform(n)`` splits ``[0, 1000)`` into n equal bins. A compiled graph
    finds the bin the same way: ``torch.bucketize(t, edges, right=True)``."""
    edges: tuple = ()

    def __post_init__(self):
        e = tuple(float(v) for v in self.edges)
        if any(not math.isfinite(v) for v in e) or any(b <= a for a, b in itertools.pairwise(e)):
            raise ValueError(f"timestep_bins edges must be finite and strictly increasing, got {self.edges}")
        object.__setattr__(self, "edges", e)

    @classmethod
    def uniform(cls, n: int, t_max: float = NUM_TRAIN_TIMESTEPS) -> TimestepBins:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"timestep_bins must be an int >= 1 or a sequence of edges, got {n!r}")
        return cls(tuple(t_max * i / n for i in range(1, n)))

    @classmethod
    def of(cls, spec) -> TimestepBins:
        """From None (one bin), an int (uniform bins) or a sequence of edges."""
        if spec is None:
            return cls()
        if isinstance(spec, TimestepBins):
            return spec
        if isinstance(spec, int) and not isinstance(spec, bool):
            return cls.uniform(spec)
        if isinstance(spec, (list, tuple)):
            return cls(tuple(spec))
        raise ValueError(f"timestep_bins must be None, an int >= 1 or a sequence of edges, got {spec!r}")

    @property
    def n(self) -> int:
        return len(self.edges) + 1

    def index(self, t: float) -> int:
        return bisect.bisect_right(self.edges, float(t))
