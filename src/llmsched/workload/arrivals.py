"""Arrival processes: Poisson (exponential gaps) and gamma (bursty when cv > 1), first arrival at 0.

Gamma gaps with shape k and mean 1/rate have a coefficient of variation cv = 1/sqrt(k); cv = 1 is Poisson,
cv > 1 bursty (BurstGPT fits gamma gaps with cv well above 1), cv < 1 smoother than Poisson.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from llmsched.workload.errors import WorkloadError

ArrivalKind = Literal["poisson", "gamma"]


def arrival_times(
    n: int,
    rate: float,
    rng: np.random.Generator,
    kind: ArrivalKind = "poisson",
    cv: float | None = None,
    shape: float | None = None,
) -> np.ndarray:
    """`n` sorted arrival times (seconds) with mean gap 1/rate; gamma takes `cv` or `shape` (not both)."""
    if rate <= 0:
        raise WorkloadError(f"rate must be > 0, got {rate}")
    if n <= 0:
        return np.zeros(0)
    if kind == "poisson":
        gaps = rng.exponential(1.0 / rate, n - 1)
    elif kind == "gamma":
        k = gamma_shape(cv, shape)
        gaps = rng.gamma(k, 1.0 / (k * rate), n - 1)
    else:
        raise WorkloadError(f"unknown arrival process {kind!r}; known: poisson, gamma")
    out = np.empty(n)
    out[0] = 0.0
    np.cumsum(gaps, out=out[1:])
    return out


def gamma_shape(cv: float | None, shape: float | None) -> float:
    if cv is not None and shape is not None:
        raise WorkloadError("gamma arrivals take cv or shape, not both")
    if shape is not None:
        if shape <= 0:
            raise WorkloadError(f"gamma shape must be > 0, got {shape}")
        return shape
    cv = 2.0 if cv is None else cv
    if cv <= 0:
        raise WorkloadError(f"gamma cv must be > 0, got {cv}")
    return 1.0 / (cv * cv)
