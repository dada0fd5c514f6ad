"""The discrete-event shell: N engines, one router, arrivals from a workload.

Events are iteration ends of each engine (a heap of (time, seq, instance, version); a stale entry is
skipped by its version) and arrivals (a sorted list, merged with the heap, so 1M arrivals never enter the
heap). Engines plan decode runs (see engine.py), so an idle stretch of pure decoding costs one event, not one
per token; an arrival routed to an engine inside a run cuts the run at the iteration in flight.

Routers see `InstanceSnapshot`s: live ones (refresh interval 0: taken at each arrival) or ones refreshed at a
fixed interval by timer events, exactly as stale as a gateway scraping `/metrics`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

from llmsched.core.metrics import MetricsCollector
from llmsched.core.types import InstanceSnapshot, Request, Status
from llmsched.engine.engine import Engine
from llmsched.policies.instance.base import Router

# Longest decode run an engine plans at once: long enough that runs dominate, short enough that an
# interrupted run wastes little planning work.
MAX_RUN = 4096


class Cluster:
    def __init__(
        self, engines: Sequence[Engine], router: Router, metrics_interval_s: float = 0.0, max_run: int = MAX_RUN
    ) -> None:
        if not engines:
            raise ValueError("a cluster needs at least one engine")
        self.engines = list(engines)
        self.router = router
        router.resize(len(self.engines))
        self.interval = metrics_interval_s
        self.max_run = max_run  # 1 = token-by-token stepping (the reference the fast-forward is tested against)
        self.metrics = MetricsCollector()
        self.rejected: list[tuple[Request, str]] = []
        self.now = 0.0
        for e in self.engines:
            e.on_request_done = self._done

    def _done(self, req: Request) -> None:
        self.router.on_finish(req, req.instance, req.finish)
        self.metrics.add(req)

    def snapshots(self, now: float) -> list[InstanceSnapshot]:
        return [e.snapshot(now) for e in self.engines]

    def run(self, requests: Sequence[Request], progress: Callable[[int], None] | None = None) -> float:
        """Simulate until every request has finished; returns the simulated end time."""
        engines = self.engines
        router = self.router
        heap: list[tuple[float, int, int, int]] = []
        versions = [0] * len(engines)
        seq = 0
        live = router.needs_snapshots and self.interval <= 0
        periodic = router.needs_snapshots and self.interval > 0
        snaps = self.snapshots(0.0)
        next_refresh = self.interval if periodic else math.inf
        max_run = self.max_run
        n = len(requests)
        for k in range(1, n):
            if requests[k].arrival < requests[k - 1].arrival:
                raise ValueError(
                    f"arrivals must be sorted: request {requests[k].rid} (index {k}) arrives at"
                    f" {requests[k].arrival} before request {requests[k - 1].rid} at {requests[k - 1].arrival}"
                )
        ai = 0
        push = heapq.heappush
        pop = heapq.heappop
        tick = max(1, n // 200)
        t = 0.0
        while True:
            next_arr = requests[ai].arrival if ai < n else math.inf
            if next_refresh <= next_arr and (not heap or next_refresh <= heap[0][0]) and ai < n:
                t = next_refresh
                snaps = self.snapshots(t)
                router.on_snapshots(snaps, t)
                next_refresh = t + self.interval
                continue
            if heap and heap[0][0] <= next_arr:
                t, _, i, ver = pop(heap)
                if ver != versions[i]:
                    continue
                eng = engines[i]
                out = eng.finish_step(t)
                for r in out.first_tokens:
                    router.on_first_token(r, i, t)
                end = eng.start_step(t, max_run)
                if end is not None:
                    versions[i] += 1
                    seq += 1
                    push(heap, (end, seq, i, versions[i]))
                continue
            if ai >= n:
                break
            req = requests[ai]
            ai += 1
            t = req.arrival
            if live:
                snaps = self.snapshots(t)
            i = router.route(req, snaps, t)
            eng = engines[i]
            try:
                eng.add(req, t)
            except ValueError as e:
                req.status = Status.ABORTED
                self.rejected.append((req, str(e)))
                continue
            router.on_dispatch(req, i, t)
            if eng.busy:
                old = eng.planned_end
                new = eng.interrupt(t)
                if new != old:
                    versions[i] += 1
                    seq += 1
                    push(heap, (new, seq, i, versions[i]))
            else:
                end = eng.start_step(t, max_run)
                if end is not None:
                    versions[i] += 1
                    seq += 1
                    push(heap, (end, seq, i, versions[i]))
            if progress is not None and ai % tick == 0:
                progress(ai)
        if progress is not None:
            progress(n)
        self.now = t
        return t
