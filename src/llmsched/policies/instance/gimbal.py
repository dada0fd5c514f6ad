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

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter


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
        self.sync(snapshots, now)
        p = self.params
        cands = self.healthy(snapshots)
        m = self.matched_blocks(req)
        soft, slope = p.kv_soft, p.kv_penalty / (1.0 - p.kv_soft)
        plen, bs = req.prompt_len, p.block_size
        pend, base = self.pending_prefill_, self.base_pending_
        cost = {}
        for i in cands:
            s = snapshots[i]
            w = s.pending_prefill_tokens + pend[i] - base[i]  # pending_est, inlined: the hot loop
            c = (w if w > 0 else 0) + max(1, plen - m[i] * bs)
            if s.kv_usage > soft:
                c += slope * (s.kv_usage - soft)
            cost[i] = c
        load = self.in_flight_
        best = min(cands, key=lambda i: (cost[i], load[i]))
        if req.session is not None:
            j = self.sessions_.get(req.session)
            if j is not None and j in cost and j != best:
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
