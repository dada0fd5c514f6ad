"""Power of two choices: sample two healthy instances, take the less loaded (Mitzenmacher's balls into bins).

Exponentially better maximum load than random at the cost of two probes; load is the router's own in-flight
count corrected by the latest snapshot (`queue_est`), so it works from stale metrics too.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedParams, TrackedRouter


class PowerOfTwoParams(TrackedParams):
    seed: int = Field(0, description="seed of the sampling Generator")


@ROUTERS.register("power-of-two")
class PowerOfTwo(TrackedRouter):
    Params = PowerOfTwoParams

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        self.sync(snapshots, now)
        cands = self.healthy(snapshots)
        if len(cands) == 1:
            self.decisions["single"] += 1
            return cands[0]
        a, b = self.rng_.choice(len(cands), size=2, replace=False).tolist()
        i, j = cands[a], cands[b]
        self.decisions["power-of-two"] += 1
        return j if self.queue_est(snapshots[j]) < self.queue_est(snapshots[i]) else i
