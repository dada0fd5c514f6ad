"""Lowest KV-cache usage as last scraped (production-stack `kv-aware` without prefix): stale by design.

It reads only the snapshot, as gateways that scrape `vllm:kv_cache_usage_perc` do, so it degrades with the
metrics interval; ties (e.g. several idle instances) go to the fewest requests in flight.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS, Router
from llmsched.policies.instance.tracked import argmin_tiebreak


@ROUTERS.register("least-kv")
class LeastKV(Router):
    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        if len(snapshots) > self.num_instances_:
            self.resize(len(snapshots))
        kv = [s.kv_usage for s in snapshots]
        self.decisions["least-kv"] += 1
        return argmin_tiebreak(kv, self.healthy(snapshots), self.in_flight_)
