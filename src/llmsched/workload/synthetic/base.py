"""The interface of synthetic generators, and their registry (`GENERATORS`).

A generator is a `Configurable`: its `Params` (pydantic) hold everything generator-specific, including the
arrival process; the run-level knobs (`rate`, `num_requests`, the seed, the engine's block size) are
arguments of `generate`, so one configured generator serves a whole sweep.

Every generator takes the LoRA options (`adapters`, `adapter_popularity`, `base_fraction`): `adapters` > 0
gives requests adapter names `lora-0` .. `lora-{N-1}` (`lora-0` the most popular) with Zipf popularity; rows of
one session share their session's adapter. They are drawn from a stream of their own, so the other columns are
those of the same seed without adapters.
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
    adapters: int = Field(0, ge=0, description="LoRA adapters the requests name (lora-0 ..); 0 = base model only")
    adapter_popularity: float = Field(1.0, ge=0, description="Zipf exponent over adapters; 0 = uniform")
    base_fraction: float = Field(0.0, ge=0, le=1, description="share of requests (sessions) on the base model")


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Probabilities of ranks 1..n proportional to rank ** -exponent."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    return w / w.sum()


def assign_adapters(cols: Columns, p: GeneratorParams, rng: np.random.Generator) -> Columns:
    """Give `cols` an adapter column per the LoRA options of `p` (unchanged when `p.adapters` is 0)."""
    if p.adapters == 0 or len(cols) == 0:
        return cols
    names = [f"lora-{k}" for k in range(p.adapters)]
    if cols.session is None:
        keys = np.arange(len(cols))
        units = len(cols)
    else:  # one draw per session, in order of first appearance (rows without a session draw alone)
        first: dict[str, int] = {}
        keys = np.array(
            [first.setdefault(s, len(first)) if s is not None else -1 for s in cols.session], dtype=np.int64
        )
        lone = keys < 0
        keys[lone] = len(first) + np.arange(int(lone.sum()))
        units = len(first) + int(lone.sum())
    pick = rng.choice(p.adapters, size=units, p=zipf_weights(p.adapters, p.adapter_popularity))
    base = rng.random(units) < p.base_fraction
    drawn = [None if b else names[k] for k, b in zip(pick.tolist(), base.tolist(), strict=True)]
    cols.adapter = [drawn[k] for k in keys.tolist()]
    return cols


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
