"""LMetric's two indicators, shared by `lmetric` and its linear-combination counterpart `linear`.

P_i: new prefill tokens the request costs on instance i (prompt minus the indexed prefix), optionally plus the
uncached prefill already queued there
(W_i). B_i: the instance's batch, as running sequences, running + waiting, or
the router's own in-flight count. Snapshot-based variants are corrected by the router's own dispatches since
the snapshot (`TrackedRouter`), so all three stay usable with stale metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter

PrefillTerm = Literal["request", "request+pending", "additive-pending"]
BatchTerm = Literal["running", "queue", "in-flight"]


class IndicatorParams(TrackedParams):
    prefill: PrefillTerm = Field(
        "request+pending",
        description="P_i: this request's new tokens; +pending adds the queued prefill W_i inside P_i; "
        "additive-pending keeps P_i = this request's and lets lmetric add W_i outside the product",
    )
    batch: BatchTerm = Field("queue", description="B_i: running, running + waiting, or router in-flight")


def indicators(
    router: TrackedRouter, req: Request, snapshots: Sequence[InstanceSnapshot], cands: object = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, B, Q) per instance as int64 arrays, Q the queue (running + waiting) estimate. Call after `sync`;
    every instance is filled (`cands` is accepted for callers that name candidates, and ignored)."""
    p = router.params
    if router.index_ is None or not req.block_hashes:  # no prefix to match: two operations
        P = np.maximum(router.w_est_, 0) if p.prefill == "request+pending" else np.zeros(router.num_instances_, np.int64)
        P += max(1, req.prompt_len)
    else:
        P = router.new_tokens_all(req)
        if p.prefill == "request+pending":
            P += router.pending()
    Q = router.queue()
    if p.batch == "in-flight":
        B = router.in_flight_.copy()
    elif p.batch == "queue":
        B = Q
    else:
        B = router.running()
    return P, B, Q
