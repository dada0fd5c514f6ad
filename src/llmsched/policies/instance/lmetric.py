"""LMetric: route to the instance with the smallest P_i x (B_i + 1), with its failure cases detected.

With `prefill="additive-pending"` the score is P_i x (B_i + 1) + W_i (W_i the prefill queued there), the
first-order cost model of docs/routers.md of which the plain product is the W_i = 0 case.

P_i and B_i are `indicators.indicators` (new prefill tokens, batch). The product needs no weights: scaling
either indicator scales every score alike. docs/routers.md derives, from the engine's cost model, the
conditions under which the product's ordering contradicts the predicted TTFT ordering
T_i ~ (W_i + P_i) / (M - B_i) (M the token budget of an iteration); each detector tests one, with no free
threshold, and counts in `self.decisions` when it changed the choice:

- `kv-pressure`: the instance lacks the KV blocks its queued and new prefill need plus one block per running
  decode (free < ceil((W_i + P_i) / block) + B_i): the request would wait for memory or cause preemptions,
  a term T has and the product lacks. Such instances are skipped while others exist.
- `load-guard`: the queue has reached `max_num_seqs` (the engine's): a new request waits for a running one to
  finish, a whole decode, which no prefill term prices. Such instances are excluded while others exist.
The product's remaining blind spot, that P_i is known only to the prefix index's resolution (index_stride x
block_size tokens), had two detectors, a floor under P_i and a tie band of (B_best + 1) x resolution decided
by the predicted TTFT; on 10 seeds of the workloads where they fire they made the mean TTFT worse in 9 and 8
of 10 seeds (+0.5%, +0.6%) and helped nowhere, so they were removed (docs/routers.md, the ablation).
There is no staleness switch: with one router the corrected batch (snapshot + own dispatches - own finishes
since) equals the router's in-flight count whatever the snapshot's age, and where other clients load the
engine it is the better of the two, so switching on age never improved a decision (the ablation shows the
old 0.5 s switch firing on half the decisions and changing none).
`detectors` switches each on or off (the ablation of benchmarks/bench_lmetric_detectors.py).
Ties go to the lower (P, B), then to a seeded random choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.indicators import IndicatorParams, indicators
from llmsched.policies.instance.tracked import TrackedRouter, lexmin

Detector = Literal["kv-pressure", "load-guard"]
DETECTORS: tuple[Detector, ...] = ("kv-pressure", "load-guard")


class LMetricParams(IndicatorParams):
    plus_one: bool = Field(True, description="B + 1 (without it an idle instance scores 0 whatever P)")
    guards: bool = Field(True, description="master switch of the failure-case detectors")
    detectors: tuple[Detector, ...] = Field(DETECTORS, description="the detectors switched on (with guards)")
    max_num_seqs: int = Field(256, ge=1, description="the engines' max_num_seqs (the simulator passes its own)")
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

        on = p.detectors
        dec = self.decisions
        bs = p.block_size
        if "kv-pressure" in on:
            # Blocks the request waits for: its own and the queued prefill's, one more per running decode.
            work = P if p.prefill == "request+pending" else P + self.pending()
            low = tab.free_lower  # a lower bound of the free blocks first: exact usage only then
            # Cheapest first: no row can be short when the least lower bound covers the largest need.
            if low[low.argmin()] < -(-int(work[work.argmax()]) // bs) + int(B[B.argmax()]):
                need = (work + (bs - 1)) // bs
                need += B
                lt = low < need
                short = (tab.free_blocks < need) & (tab.total > 0) if lt[lt.argmax()] else None
            else:
                short = None
            if short is not None:
                ok = (~short).nonzero()[0] if c is None else c[~short[c]]
                n_c = self.num_instances_ if c is None else len(c)
                if len(ok) and len(ok) < n_c:
                    dec["kv-pressure"] += 1
                    c = ok

        b1 = B + one
        prod = P * b1
        first = _argmin(prod, c)
        if "load-guard" in on and Q[first] >= p.max_num_seqs:
            room = (p.max_num_seqs > Q).nonzero()[0] if c is None else c[Q[c] < p.max_num_seqs]
            if len(room):
                dec["load-guard"] += 1
                c = room

        score = prod + self.pending() if additive else prod
        best = first if not additive and (c is None or first in c) else _argmin(score, c)
        near = (score == score[best]).nonzero()[0] if c is None else c[score[c] == score[best]]
        # `near` now ties in score: the lower (P, B) decides (no dominated pick), then a seeded draw.
        if len(near) > 1:
            if additive:
                near = lexmin(near, P, B)
            else:  # equal scores (B + 1) x P and equal P imply equal B: P alone decides
                v = P[near]
                low = v[v.argmin()]
                if low != v[v.argmax()]:  # (usually all equal: idle instances)
                    near = near[v == low]
        return self._pick(near, score, P, B, final=True)

    def _pick(
        self, near: np.ndarray, score: np.ndarray, P: np.ndarray, B: np.ndarray, final: bool = False
    ) -> int:
        """Lowest score among `near`; ties to the lower (P, B) (never a dominated one), then random.
        `final`: `near` are already tied in (score, P, B)."""
        ties = near if final or len(near) == 1 else lexmin(near, score, P, B)
        if len(ties) == 1:
            self.decisions["product"] += 1
            return int(ties[0])
        self.decisions["random-tie"] += 1
        return int(ties[int(self.rng_.integers(len(ties)))])
