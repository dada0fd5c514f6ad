"""Longest approximate prefix match, ignoring load (production-stack `prefix-aware`).

Maximises cache reuse and nothing else: the upper bound on prefix-hit rate and the textbook hot-spot maker.
Ties (including "nobody has it") go to the fewest requests in flight, so new prefixes still spread out.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.tracked import TrackedRouter


@ROUTERS.register("prefix")
class PrefixRouter(TrackedRouter):
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        self.sync(snapshots, now)
        m = self.matched_blocks(req)
        load = self.in_flight_
        cands = self.healthy(snapshots)
        best = cands[0]
        for i in cands[1:]:
            if m[i] > m[best] or (m[i] == m[best] and load[i] < load[best]):
                best = i
        self.decisions["match" if m[best] else "no-match"] += 1
        return best
