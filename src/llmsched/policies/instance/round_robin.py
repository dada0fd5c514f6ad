"""Round robin over healthy instances: vLLM production-stack's and most gateways' default."""

from __future__ import annotations

from collections.abc import Sequence

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS, Router


@ROUTERS.register("round-robin")
class RoundRobin(Router):
    needs_snapshots = False

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.next_ = 0

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        n = len(snapshots)
        if getattr(snapshots, "num_unhealthy", None) == 0:  # a SnapshotTable, all healthy: no row to read
            i = self.next_ % n
            self.next_ = (i + 1) % n
            self.decisions["rotate"] += 1
            return i
        for k in range(n):
            i = (self.next_ + k) % n
            if snapshots[i].healthy:
                self.next_ = (i + 1) % n
                self.decisions["rotate"] += 1
                return i
        i = self.next_ % n
        self.next_ = (i + 1) % n
        self.decisions["all-unhealthy"] += 1
        return i
