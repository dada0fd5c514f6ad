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
    router: TrackedRouter, req: Request, snapshots: Sequence[InstanceSnapshot], cands: Sequence[int]
) -> tuple[list[int], list[int], list[int]]:
    """(P, B, Q) per instance, Q the queue (running + waiting) estimate; lists by instance, `cands` filled."""
    p = router.params
    n = router.num_instances_
    m = router.matched_blocks(req)
    bs = p.block_size
    plen = req.prompt_len
    with_pending = p.prefill == "request+pending"
    batch = p.batch
    inflight = router.in_flight_
    base_if = router.base_in_flight_
    pend = router.pending_prefill_
    base_pend = router.base_pending_
    P = [0] * n
    B = [0] * n
    Q = [0] * n
    for i in cands:
        s = snapshots[i]
        new = plen - m[i] * bs
        if new < 1:
            new = 1
        if with_pending:
            q = s.pending_prefill_tokens + pend[i] - base_pend[i]
            if q > 0:
                new += q
        P[i] = new
        d = inflight[i] - base_if[i]
        run = s.num_running + d
        q = run + s.num_waiting
        Q[i] = q if q > 0 else 0
        if batch == "in-flight":
            B[i] = inflight[i]
        elif batch == "queue":
            B[i] = Q[i]
        else:
            B[i] = run if run > 0 else 0
    return P, B, Q
