"""Pinned routing: each request goes to the instance named for its `rid` (a recording's routing replayed).

`llmsched calibrate` replays a gateway recording with every request on the backend it went to, so the fit
sees the batches the real engines ran, whatever router made them. Requests without an entry (and entries
naming an unhealthy or absent instance) fall back to round robin, counted in `decisions["unpinned"]`. Not in the `ROUTERS` registry: it is replay
machinery, not a policy one would run (`llmsched.bench.calibrate.simulate_replay` builds it).
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmsched.core.registry import Params
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import Router


class Pinned(Router):
    needs_snapshots = False

    class Params(Params):
        assignment: list[int] = Field(default_factory=list, description="instance of request rid (index = rid)")

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.next_ = 0

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        a = self.params.assignment
        ok = self.healthy(snapshots)
        if 0 <= req.rid < len(a) and a[req.rid] in ok:
            self.decisions["pinned"] += 1
            return a[req.rid]
        self.decisions["unpinned"] += 1
        self.next_ = (self.next_ + 1) % len(ok)
        return ok[self.next_]
