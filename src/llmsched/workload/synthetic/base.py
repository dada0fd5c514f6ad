"""The interface of synthetic generators, and their registry (`GENERATORS`).

A generator is a `Configurable`: its `Params` (pydantic) hold everything generator-specific, including the
arrival process; the run-level knobs (`rate`, `num_requests`, the seed, the engine's block size) are
arguments of `generate`, so one configured generator serves a whole sweep.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from pydantic import Field

from llmsched.core.registry import Configurable, Params, Registry
from llmsched.workload.arrivals import ArrivalKind, arrival_times
from llmsched.workload.columns import Columns


class GeneratorParams(Params):
    arrival: ArrivalKind = Field("poisson", description="arrival process: poisson | gamma")
    cv: float | None = Field(None, gt=0, description="gamma: coefficient of variation of gaps (default 2)")
    shape: float | None = Field(None, gt=0, description="gamma: shape k (cv = 1/sqrt(k)); instead of cv")


class Generator(Configurable, ABC):
    """Turns (n, rate, rng, block_size) into `Columns`; sorted arrivals starting at 0."""

    Params = GeneratorParams
    params: GeneratorParams
    default_rate: float = 10.0

    def arrivals(self, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
        p = self.params
        return arrival_times(n, rate, rng, p.arrival, p.cv, p.shape)

    @abstractmethod
    def generate(self, n: int, rate: float, rng: np.random.Generator, block_size: int = 16) -> Columns: ...


GENERATORS: Registry[Generator] = Registry("workload generator")
