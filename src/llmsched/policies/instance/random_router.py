"""Uniformly random healthy instance: the load-oblivious baseline that needs no state (vllm-router `random`)."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmsched.core.registry import Params
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS, Router


class RandomParams(Params):
    seed: int = Field(0, description="seed of the router's numpy Generator")


@ROUTERS.register("random")
class RandomRouter(Router):
    Params = RandomParams
    needs_snapshots = True  # only for health

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        cands = self.healthy(snapshots)
        self.decisions["random"] += 1
        return cands[int(self.rng_.integers(len(cands)))]
