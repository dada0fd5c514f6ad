"""NVIDIA Dynamo KV router: cost = w x prefill blocks + decode blocks, lowest cost (softmax if temperature > 0).

Prefill blocks = this request's uncached blocks on the instance plus the instance's pending uncached prefill
(snapshot, corrected by own dispatches); decode blocks = KV blocks in use (kv_usage x total blocks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter


class DynamoParams(TrackedParams):
    prefill_weight: float = Field(1.0, ge=0, description="Dynamo's overlap_score_weight")
    temperature: float = Field(0.0, ge=0, description="0 = argmin; > 0 samples softmax(-cost / T)")
    seed: int = 0


@ROUTERS.register("dynamo-cost")
class DynamoCost(TrackedRouter):
    Params = DynamoParams
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        self.sync(snapshots, now)
        p = self.params
        bs = p.block_size
        cands = self.healthy(snapshots)
        m = self.matched_blocks(req)
        costs = []
        for i in cands:
            s = snapshots[i]
            prefill = (self.new_tokens(req, m[i]) + self.pending_est(s)) / bs
            decode = s.kv_usage * s.num_total_blocks
            costs.append(p.prefill_weight * prefill + decode)
        if p.temperature > 0 and len(cands) > 1:
            lo = min(costs)
            w = [math.exp(-(c - lo) / p.temperature) for c in costs]
            tot = sum(w)
            k = int(self.rng_.choice(len(cands), p=[x / tot for x in w]))
            self.decisions["softmax"] += 1
            return cands[k]
        k = min(range(len(cands)), key=lambda j: (costs[j], self.in_flight_[cands[j]]))
        self.decisions["argmin"] += 1
        return cands[k]
