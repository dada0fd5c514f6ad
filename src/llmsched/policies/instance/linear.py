"""Linear combination of LMetric's indicators, w_prefill x P + w_batch x B: the tuned baseline it must match.

Only the ratio w_batch / w_prefill (prefill tokens one queued request is worth) changes the argmin; the grid
search in benchmarks/bench_router_linear_grid.py sweeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS
from llmsched.policies.instance.indicators import IndicatorParams, indicators
from llmsched.policies.instance.tracked import TrackedRouter, lexmin


class LinearParams(IndicatorParams):
    w_prefill: float = Field(1.0, ge=0)
    w_batch: float = Field(1024.0, ge=0, description="tokens-equivalent of one request in the batch")


@ROUTERS.register("linear")
class LinearRouter(TrackedRouter):
    Params = LinearParams
    uses_index = True

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        tab = self.sync(snapshots, now)
        P, B, _ = indicators(self, req, snapshots)
        wp, wb = self.params.w_prefill, self.params.w_batch
        best = int(lexmin(tab.healthy_rows(), wp * P + wb * B, self.in_flight_)[0])
        self.decisions["linear"] += 1
        return best
