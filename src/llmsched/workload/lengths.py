"""Token-length distributions, as validated parameter objects so every generator states its own in params.

`lognormal` is parameterised by its median and log-space sigma (mean = median * exp(sigma^2 / 2)), the usual
fit of ShareGPT-like prompt and answer lengths; `uniform` draws integers in [low, high]; `constant` is a
fixed value. Every draw is rounded and clipped to [min, max] (min >= 1: a request has at least one token).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator


class LengthDist(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["lognormal", "uniform", "constant"] = "lognormal"
    median: float = Field(128.0, gt=0, description="lognormal median")
    sigma: float = Field(1.0, ge=0, description="lognormal log-space standard deviation")
    low: int = Field(1, ge=1, description="uniform lower bound (inclusive)")
    high: int = Field(1, ge=1, description="uniform upper bound (inclusive)")
    value: int = Field(1, ge=1, description="constant value")
    min: int = Field(1, ge=1, description="clip below")
    max: int = Field(1 << 20, ge=1, description="clip above")

    @model_validator(mode="after")
    def _check(self) -> LengthDist:
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        if self.kind == "uniform" and self.low > self.high:
            raise ValueError(f"uniform low {self.low} > high {self.high}")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.kind == "lognormal":
            x = np.rint(rng.lognormal(np.log(self.median), self.sigma, n))
        elif self.kind == "uniform":
            x = rng.integers(self.low, self.high, n, endpoint=True)
        else:
            x = np.full(n, self.value)
        return np.clip(x, self.min, self.max).astype(np.int64)

    def mean(self) -> float:
        """Mean before clipping (for docs and rate checks)."""
        if self.kind == "lognormal":
            return float(self.median * np.exp(self.sigma**2 / 2))
        if self.kind == "uniform":
            return (self.low + self.high) / 2
        return float(self.value)


def lognormal(median: float, sigma: float, lo: int = 1, hi: int = 1 << 20) -> LengthDist:
    return LengthDist(kind="lognormal", median=median, sigma=sigma, min=lo, max=hi)


def uniform(low: int, high: int) -> LengthDist:
    return LengthDist(kind="uniform", low=low, high=high, min=low, max=high)
