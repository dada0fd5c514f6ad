"""llm-d inference scheduler's default: a weighted sum of scorers, highest total wins.

Scorers (each in [0, 1]): queue = min-max normalised waiting count (fewest waiting scores 1), kv-cache
utilisation = 1 - kv_usage, prefix = matched leading blocks / prompt blocks (router-side LRU index). Weights
default to llm-d's 2, 2, 3. Like llm-d it reads queue and KV from scraped metrics (`correct_stale: false`);
setting it adds the router's own dispatches since the scrape to the waiting count.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter


class LlmdParams(TrackedParams):
    queue_weight: float = Field(2.0, ge=0)
    kv_weight: float = Field(2.0, ge=0)
    prefix_weight: float = Field(3.0, ge=0)
    correct_stale: bool = Field(False, description="add own dispatches since the scrape to waiting counts")


@ROUTERS.register("llmd-weighted")
class LlmdWeighted(TrackedRouter):
    Params = LlmdParams
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        self.sync(snapshots, now)
        p = self.params
        cands = self.healthy(snapshots)
        if p.correct_stale:
            waiting = {i: max(0, snapshots[i].num_waiting + self.delta(i)) for i in cands}
        else:
            waiting = {i: snapshots[i].num_waiting for i in cands}
        lo, hi = min(waiting.values()), max(waiting.values())
        span = hi - lo
        m = self.matched_blocks(req)
        nblocks = len(req.block_hashes) if req.block_hashes else 0
        best, best_score = cands[0], float("-inf")
        load = self.in_flight_
        for i in cands:
            q = (hi - waiting[i]) / span if span else 1.0
            pre = m[i] / nblocks if nblocks else 0.0
            score = p.queue_weight * q + p.kv_weight * (1.0 - snapshots[i].kv_usage) + p.prefix_weight * pre
            if score > best_score or (score == best_score and load[i] < load[best]):
                best, best_score = i, score
        self.decisions["weighted"] += 1
        return best
