"""LMetric: route to the instance with the smallest P_i x (B_i + 1), with its failure cases guarded.

With `prefill="additive-pending"` the score is P_i x (B_i + 1) + W_i (W_i the prefill queued there), the
first-order cost model of docs/routers.md of which the plain product is the W_i = 0 case.

P_i and B_i are `indicators.indicators` (new prefill tokens, batch). The product needs no weights: scaling
either indicator scales every score alike. docs/routers.md derives when it misleads; each case has a detector
here, applied in this order, and a counter in `self.decisions` when it changed the choice:

- `kv-pressure`: instances whose KV usage >= `kv_guard` are skipped while others exist (the product ignores
  memory; a full cache means preemptions, not a cheap prefill).
- `stale`: a snapshot older than `stale_after_s` makes B_i fall back to the router's own in-flight count.
- `load-guard`: the product's pick has a queue above `guard_rel` x min queue + `guard_abs` (a full prefix hit
  scores ~0 whatever the load: hot-spot "death spiral"), so the overloaded instances are excluded.
- `prefill-floor`: P_i is floored at `prefill_floor` tokens, so among (near) full hits load still counts.
- `near-tie`: products within `tie_tolerance` of the best but different expected prefill work ahead
  (pending + own tokens): take the least work (products that agree do not mean queues that agree).
Ties go to the lower (P, B), then to a seeded random choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.indicators import IndicatorParams, indicators
from llmsched.policies.instance.tracked import TrackedRouter, lexmin


class LMetricParams(IndicatorParams):
    plus_one: bool = Field(True, description="B + 1 (without it an idle instance scores 0 whatever P)")
    guards: bool = Field(True, description="master switch of the failure-case detectors below")
    prefill_floor: int = Field(64, ge=0, description="tokens; floor of P_i")
    guard_rel: float = Field(2.0, ge=1, description="load guard: queue > guard_rel x min queue + guard_abs")
    guard_abs: int = Field(8, ge=0)
    tie_tolerance: float = Field(0.05, ge=0, description="relative band of products treated as a tie")
    stale_after_s: float | None = Field(0.5, gt=0, description="snapshot age that switches B to in-flight")
    kv_guard: float = Field(0.97, gt=0, le=1, description="skip instances at or above this KV usage")
    seed: int = 0


def _argmin(v: np.ndarray, c: np.ndarray | None) -> int:
    """Index of the first minimum of `v` over candidates `c` (None: all)."""
    return int(v.argmin()) if c is None else int(c[v[c].argmin()])


@ROUTERS.register("lmetric")
class LMetric(TrackedRouter):
    Params = LMetricParams
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        """Vectorised over instances: a handful of numpy operations, whatever the instance count."""
        tab = self.sync(snapshots, now)
        p = self.params
        c = tab.healthy_rows()  # None: every instance is a candidate
        P, B, Q = indicators(self, req, snapshots)
        one = 1 if p.plus_one else 0
        additive = p.prefill == "additive-pending"
        if not p.guards:
            score = P * (B + one)
            if additive:
                score += self.pending()
            return self._pick(np.arange(self.num_instances_) if c is None else c, score, P, B)

        dec = self.decisions
        if (p.stale_after_s is not None and p.batch != "in-flight" and not tab.live
                and tab.time.min() < now - p.stale_after_s):
            stale = tab.time < now - p.stale_after_s
            if c is not None:
                stale[~tab.healthy] = False
            if stale.any():
                B = np.where(stale, self.in_flight_, B)
                dec["stale"] += 1
        kv_guard = p.kv_guard
        if tab.kv_upper.max(initial=0.0) >= kv_guard:  # an upper bound: the exact usage is computed only now
            hot = tab.kv_usage >= kv_guard
            if c is None:
                if hot.any() and not hot.all():
                    dec["kv-pressure"] += 1
                    c = np.flatnonzero(~hot)
            else:
                ok = c[~hot[c]]
                if len(ok) and len(ok) < len(c):
                    dec["kv-pressure"] += 1
                    c = ok

        b1 = B + one
        prod = P * b1
        first = _argmin(prod, c)
        qmin = int(Q.min() if c is None else Q[c].min())
        limit = p.guard_rel * qmin + p.guard_abs
        if Q[first] > limit:
            dec["load-guard"] += 1
            c = np.flatnonzero(limit >= Q) if c is None else c[Q[c] <= limit]

        floor = p.prefill_floor
        if additive:
            score = np.maximum(P, floor) * b1 + self.pending()
        elif (not req.block_hashes and req.prompt_len >= floor) or int(P.min() if c is None else P[c].min()) >= floor:
            score = prod  # the floor changes nothing
        else:
            score = np.maximum(P, floor) * b1
        best = first if score is prod and (c is None or first in c) else _argmin(score, c)
        if P[first] < floor and best != first and (c is None or first in c):
            dec["prefill-floor"] += 1

        # The rest looks only at the instances within the tie band of the best.
        band = score[best] * (1.0 + p.tie_tolerance)
        near = np.flatnonzero(score <= band) if c is None else c[score[c] <= band]
        if len(near) > 1 and p.tie_tolerance > 0:
            work = P[near] if p.prefill == "request+pending" else P[near] + self.pending()[near]
            lightest = near[work == work.min()]
            if P[best] + (0 if p.prefill == "request+pending" else self.pending()[best]) != work.min():
                dec["near-tie"] += 1
                return self._pick(lightest, score, P, B)
            if p.prefill == "request+pending":  # equal P among the lightest: (score, P, B) orders as score
                sc = score[lightest]
                return self._pick(lightest[sc == sc.min()], score, P, B, final=True)
        return self._pick(near, score, P, B)

    def _pick(
        self, near: np.ndarray, score: np.ndarray, P: np.ndarray, B: np.ndarray, final: bool = False
    ) -> int:
        """Lowest score among `near` (the candidates within the tie band of the best, or the tie-break's
        choice); ties to the lower (P, B) (never a dominated one, even under the floor), then random.
        `final`: `near` are already tied in (score, P, B)."""
        ties = near if final or len(near) == 1 else lexmin(near, score, P, B)
        if len(ties) == 1:
            self.decisions["product"] += 1
            return int(ties[0])
        self.decisions["random-tie"] += 1
        return int(ties[int(self.rng_.integers(len(ties)))])
