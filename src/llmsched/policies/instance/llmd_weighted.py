"""llm-d inference scheduler's default: a weighted sum of scorers, highest total wins.

Scorers (each in [0, 1]): queue = min-max normalised waiting count (fewest waiting scores 1), kv-cache
utilisation = 1 - kv_usage, prefix = matched leading blocks / prompt blocks (router-side LRU index). Weights
default to llm-d's 2, 2, 3. Like llm-d it reads queue and KV from scraped metrics (`correct_stale: false`);
setting it adds the router's own dispatches since the scrape to the waiting count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter, lexmin


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
        tab = self.sync(snapshots, now)
        p = self.params
        c = tab.healthy_rows()
        waiting = tab.waiting
        if p.correct_stale:
            waiting = np.maximum(waiting + self.in_flight_ - self.base_in_flight_, 0)
        wc = waiting if c is None else waiting[c]
        lo, hi = int(wc.min()), int(wc.max())
        span = hi - lo
        q = (hi - waiting) / span if span else np.ones(len(waiting))
        nblocks = len(req.block_hashes) if req.block_hashes else 0
        pre = self.matched_blocks(req) / nblocks if nblocks else np.zeros(len(waiting))
        score = p.queue_weight * q + p.kv_weight * (1.0 - tab.kv_usage) + p.prefix_weight * pre
        self.decisions["weighted"] += 1
        return int(lexmin(c, -score, self.in_flight_)[0])
