"""Fewest requests in flight, by the router's own count (exact for a single router, never stale)."""

from __future__ import annotations

from collections.abc import Sequence

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS, Router


@ROUTERS.register("least-requests")
class LeastRequests(Router):
    needs_snapshots = True  # only for health

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.next_ = 0  # rotating tie-break, so equal loads do not always favour instance 0

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        if len(snapshots) > self.num_instances_:
            self.resize(len(snapshots))
        cands = self.healthy(snapshots)
        n = len(cands)
        start = self.next_ % n
        load = self.in_flight_
        best = cands[start]
        for k in range(1, n):
            i = cands[(start + k) % n]
            if load[i] < load[best]:
                best = i
        self.next_ = start + 1
        self.decisions["least-requests"] += 1
        return best
