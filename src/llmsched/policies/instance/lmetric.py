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

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.indicators import IndicatorParams, indicators
from llmsched.policies.instance.tracked import TrackedRouter


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


@ROUTERS.register("lmetric")
class LMetric(TrackedRouter):
    Params = LMetricParams
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        self.sync(snapshots, now)
        p = self.params
        cands = self.healthy(snapshots)
        P, B, Q = indicators(self, req, snapshots, cands)
        one = 1 if p.plus_one else 0
        if not p.guards:
            if p.prefill == "additive-pending":
                return self._pick(cands, {i: P[i] * (B[i] + one) + self.pending_est(snapshots[i]) for i in cands}, P, B)
            return self._pick(cands, {i: P[i] * (B[i] + one) for i in cands}, P, B)

        # One pass for the snapshot-based detectors (the hot path of every decision, kept flat).
        dec = self.decisions
        kv_guard = p.kv_guard
        horizon = now - p.stale_after_s if p.stale_after_s is not None and p.batch != "in-flight" else -1e300
        inflight = self.in_flight_
        ok = []
        stale = False
        for i in cands:
            s = snapshots[i]
            if s.time < horizon:
                B[i] = inflight[i]
                stale = True
            if s.kv_usage < kv_guard:
                ok.append(i)
        if stale:
            dec["stale"] += 1
        if ok and len(ok) < len(cands):
            dec["kv-pressure"] += 1
            cands = ok

        first, first_v, qmin = cands[0], float("inf"), Q[cands[0]]
        for i in cands:
            v = P[i] * (B[i] + one)
            if v < first_v:
                first, first_v = i, v
            if Q[i] < qmin:
                qmin = Q[i]
        limit = p.guard_rel * qmin + p.guard_abs
        if Q[first] > limit:
            dec["load-guard"] += 1
            cands = [i for i in cands if Q[i] <= limit]

        floor = p.prefill_floor
        additive = p.prefill == "additive-pending"
        score = {}
        best, best_v = cands[0], float("inf")
        for i in cands:
            v = (P[i] if P[i] > floor else floor) * (B[i] + one)
            if additive:
                v += self.pending_est(snapshots[i])
            score[i] = v
            if v < best_v:
                best, best_v = i, v
        if P[first] < floor and best != first and first in score:
            dec["prefill-floor"] += 1

        if p.tie_tolerance > 0:
            band = best_v * (1.0 + p.tie_tolerance)
            near = [i for i in cands if score[i] <= band]
            if len(near) > 1:
                if p.prefill == "request+pending":
                    work = {i: P[i] for i in near}
                else:
                    work = {i: P[i] + self.pending_est(snapshots[i]) for i in near}
                least = min(work.values())
                lightest = [i for i in near if work[i] == least]
                if best not in lightest:
                    dec["near-tie"] += 1
                    return self._pick(lightest, score, P, B)
                if len(near) < len(cands):
                    cands = near
        return self._pick(cands, score, P, B)

    def _pick(self, cands: Sequence[int], score: dict[int, float], P: Sequence[int], B: Sequence[int]) -> int:
        """Lowest score; ties to the lower (P, B) (never a dominated one, even under the floor), then random."""
        lo = None
        ties: list[int] = []
        for i in cands:
            key = (score[i], P[i], B[i])
            if lo is None or key < lo:
                lo, ties = key, [i]
            elif key == lo:
                ties.append(i)
        if len(ties) == 1:
            self.decisions["product"] += 1
            return ties[0]
        self.decisions["random-tie"] += 1
        return ties[int(self.rng_.integers(len(ties)))]
