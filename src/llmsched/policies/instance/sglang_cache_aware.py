"""SGLang router's `cache_aware` policy: cache affinity unless the load is clearly imbalanced.

Rules (SGLang router defaults): load = the router's own in-flight count; the system is imbalanced when
max - min > `balance_abs_threshold` and max > `balance_rel_threshold` x min, and then the least loaded instance
wins; otherwise the best prefix match wins if its match rate (matched / prompt tokens) exceeds
`cache_threshold`, else the least loaded instance.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter, argmin_tiebreak


class SGLangParams(TrackedParams):
    cache_threshold: float = Field(0.3, ge=0, le=1)
    balance_abs_threshold: int = Field(64, ge=0)
    balance_rel_threshold: float = Field(1.5, ge=1)


@ROUTERS.register("sglang-cache-aware")
class SGLangCacheAware(TrackedRouter):
    Params = SGLangParams
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        self.sync(snapshots, now)
        p = self.params
        cands = self.healthy(snapshots)
        load = self.in_flight_
        lo = min(load[i] for i in cands)
        hi = max(load[i] for i in cands)
        if hi - lo > p.balance_abs_threshold and hi > p.balance_rel_threshold * lo:
            self.decisions["imbalanced"] += 1
            return argmin_tiebreak(load, cands, [0] * self.num_instances_)
        m = self.matched_blocks(req)
        best = cands[0]
        for i in cands[1:]:
            if m[i] > m[best] or (m[i] == m[best] and load[i] < load[best]):
                best = i
        rate = m[best] * p.block_size / req.prompt_len if req.prompt_len else 0.0
        if rate > p.cache_threshold:
            self.decisions["cache-hit"] += 1
            return best
        self.decisions["low-match"] += 1
        return argmin_tiebreak(load, cands, [0] * self.num_instances_)
