"""The shaping options every workload shares: order, origin, window, rate, count.

Order of operations (documented in docs/workloads.md): sort by arrival (stable, so file order breaks ties) ->
shift so the first request arrives at 0 -> keep the window [start, end) of that timeline -> shift again so
the first kept request is at 0 -> keep the first `limit` requests -> divide times by `rate_scale` (or scale
them so the kept requests' mean rate, (n - 1) / span, is `target_rate`).
"""

from __future__ import annotations

import numpy as np

from llmsched.workload.columns import Columns
from llmsched.workload.errors import WorkloadError


def shape(
    cols: Columns,
    *,
    window: tuple[float, float] | None = None,
    rate_scale: float = 1.0,
    target_rate: float | None = None,
    limit: int | None = None,
) -> Columns:
    """Sorted, rebased, windowed, rescaled and truncated copy of `cols` (rows in arrival order)."""
    if rate_scale <= 0:
        raise WorkloadError(f"rate_scale must be > 0, got {rate_scale}")
    if window is not None and not window[0] < window[1]:
        raise WorkloadError(f"window must be (start, end) with start < end, got {window}")
    if not np.all(np.isfinite(cols.arrival)):
        raise WorkloadError("arrival times must be finite")
    arrival = cols.arrival
    if len(arrival) > 1 and np.any(arrival[1:] < arrival[:-1]):
        cols = cols.take(np.argsort(arrival, kind="stable"))
    if len(cols):
        cols.arrival = cols.arrival - cols.arrival[0]
    if window is not None:
        lo, hi = np.searchsorted(cols.arrival, window, side="left")
        cols = cols.take(np.arange(lo, hi))
        if len(cols):
            cols.arrival = cols.arrival - cols.arrival[0]
    if limit is not None and len(cols) > limit:
        cols = cols.take(np.arange(limit))
    if target_rate is not None:
        span = float(cols.arrival[-1]) if len(cols) else 0.0
        if len(cols) > 1 and span > 0:
            cols.arrival = cols.arrival * ((len(cols) - 1) / span / target_rate)
    elif rate_scale != 1.0:
        cols.arrival = cols.arrival / rate_scale
    return cols
