"""Gimbal-style engine-level dispatch: prefix-token load, KV-cache utilisation and user stickiness.

Gimbal's exact formula is not public; this is ours (docs/routers.md). In tokens of prefill work:

    cost_i = pending_i + new_i + kv_penalty x max(0, kv_i - kv_soft) / (1 - kv_soft)

pending_i = uncached prefill queued on i (snapshot + own dispatches since), new_i = this request's uncached
tokens there (prefix index): together the prefill the request waits for, the dominant part of its TTFT.
The KV term only bites near memory exhaustion, where preemption would cost more than any prefill. A user's
session stays on its last instance while that costs at most `stick_rel` x best + `stick_abs` tokens more than
the best, since its conversation history is cached there even when the index has aged it out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter, lexmin


class GimbalParams(TrackedParams):
    kv_soft: float = Field(0.8, ge=0, lt=1, description="KV usage where the penalty starts")
    kv_penalty: float = Field(32768.0, ge=0, description="tokens of penalty at 100% KV usage")
    stick_rel: float = Field(0.25, ge=0)
    stick_abs: int = Field(2048, ge=0, description="tokens")
    max_sessions: int = Field(1 << 16, ge=1, description="sessions remembered (LRU)")


@ROUTERS.register("gimbal")
class GimbalRouter(TrackedRouter):
    Params = GimbalParams
    uses_index = True

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.sessions_: OrderedDict[str, int] = OrderedDict()

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        tab = self.sync(snapshots, now)
        p = self.params
        c = tab.healthy_rows()
        cost = (self.pending() + self.new_tokens_all(req)).astype(np.float64)
        soft = p.kv_soft
        if tab.kv_upper.max(initial=0.0) > soft:  # an upper bound: exact usage only computed when it may bite
            over = np.maximum(tab.kv_usage - soft, 0.0)
            cost += np.where(over > 0, p.kv_penalty / (1.0 - soft) * over, 0.0)
        best = int(lexmin(c, cost, self.in_flight_)[0])
        if req.session is not None:
            j = self.sessions_.get(req.session)
            if j is not None and (c is None or j in c) and j != best:
                if cost[j] <= cost[best] * (1.0 + p.stick_rel) + p.stick_abs:
                    self.decisions["sticky"] += 1
                    return j
                self.decisions["unstick"] += 1
                return best
        self.decisions["cost"] += 1
        return best

    def on_dispatch(self, req: Request, instance: int, now: float) -> None:
        super().on_dispatch(req, instance, now)
        if req.session is not None:
            self.sessions_[req.session] = instance
            self.sessions_.move_to_end(req.session)
            if len(self.sessions_) > self.params.max_sessions:
                self.sessions_.popitem(last=False)
