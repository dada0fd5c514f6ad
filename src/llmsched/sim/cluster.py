"""The discrete-event shell: N engines, one router, arrivals from a workload.

Events are iteration ends of each engine (a heap of (time, seq, instance, version); a stale entry is
skipped by its version) and arrivals (a sorted list, merged with the heap, so 1M arrivals never enter the
heap). Engines plan decode runs (see engine.py), so an idle stretch of pure decoding costs one event, not one
per token; an arrival routed to an engine inside a run cuts the run at the iteration in flight.

Routers see a `SnapshotTable` (one row per engine): live (refresh interval 0: as of each arrival) or
refreshed at a fixed interval (and phase) by timer events, exactly as stale as a gateway scraping `/metrics`, and holding
only what vLLM's `/metrics` exports (no queued-prefill gauge: the router keeps its own account, as the gateway
does). Live rows are rewritten only for engines that had an event since the last arrival; the KV usage of an
engine inside a decode run grows without events and is computed for all of them at once, in closed form,
only when a router reads it (`_refresh_kv`). So an arrival costs O(engines changed), not O(engines).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

import numpy as np

from llmsched.core.metrics import MetricsCollector
from llmsched.core.snapshots import NOT_EXPORTED, SnapshotTable
from llmsched.core.types import InstanceSnapshot, Request, Status
from llmsched.engine.engine import Engine
from llmsched.policies.instance.base import Router

# Longest decode run an engine plans at once: long enough that runs dominate, short enough that an
# interrupted run wastes little planning work.
MAX_RUN = 4096


class Cluster:
    def __init__(
        self, engines: Sequence[Engine], router: Router, metrics_interval_s: float = 0.0, max_run: int = MAX_RUN,
        metrics_phase_s: float = 0.0,
    ) -> None:
        if not engines:
            raise ValueError("a cluster needs at least one engine")
        self.engines = list(engines)
        self.router = router
        router.resize(len(self.engines))
        self.interval = metrics_interval_s
        # Periodic refreshes at phase + k * interval (k >= 0): a gateway's scrape loop runs on its own clock, so
        # its scrapes need not fall on the workload's time origin (see bench.calibrate.replay_of's `origin`).
        if not math.isfinite(metrics_phase_s):
            raise ValueError(f"metrics_phase_s must be finite, got {metrics_phase_s}")
        self.phase = metrics_phase_s % metrics_interval_s if metrics_interval_s > 0 else 0.0
        self.max_run = max_run  # 1 = token-by-token stepping (the reference the fast-forward is tested against)
        self.metrics = MetricsCollector()
        self.rejected: list[tuple[Request, str]] = []
        self.now = 0.0
        for e in self.engines:
            e.on_request_done = self._done
        n = len(self.engines)
        self.snapshot_table = SnapshotTable(n)
        self.snapshot_table.kv_refresh = self._refresh_kv
        self._dirty: set[int] = set(range(n))
        # Decode runs in flight, per engine (see Engine.lazy_kv): KV usage as a closed form of the time.
        self._in_run: set[int] = set()
        self._runs: list[tuple | None] = [None] * n  # Engine.lazy_kv of each engine in a run, when asked
        self._slow: set[int] = set()  # in a run not in closed form: read through Engine.snapshot
        self._kv_now = 0.0
        self._live = [getattr(e, "live_gauges", None) or self._live_of(e) for e in self.engines]
        self._loras = [getattr(e, "lora", None) for e in self.engines]  # (the vLLM-scheduler engine has none)

    @staticmethod
    def _live_of(e: Engine) -> Callable[[float], tuple]:
        """`Engine.live_gauges` of an engine without it (the vLLM-scheduler engine: no runs between events)."""

        def live(now: float) -> tuple:
            end = e.run_end_blocks()
            return (*e.gauges(None if end and end > 0 else now), end)

        return live

    def _done(self, req: Request) -> None:
        self.router.on_finish(req, req.instance, req.finish)
        self.metrics.add(req)

    def snapshots(self, now: float) -> list[InstanceSnapshot]:
        return [e.snapshot(now) for e in self.engines]

    def _scrape_all(self, now: float) -> None:
        """A periodic refresh: every row as a scrape of vLLM's /metrics would read it (no pending prefill)."""
        table = self.snapshot_table
        for e in self.engines:
            running, waiting, used, total, _, queries, hits = e.gauges(now)
            table.set_gauges(e.instance, now, running, waiting, used, total, NOT_EXPORTED, queries, hits, used)
            lora = getattr(e, "lora", None)  # (the vLLM-scheduler engine has no LoRA model)
            if lora is not None:
                table.set_adapters(e.instance, lora.state())
        table.kv_stale = False

    def _refresh_live(self, now: float) -> None:
        """Live rows at `now`: rewrite those of engines with events since the last arrival; mark KV lazy."""
        table = self.snapshot_table
        if self._dirty:
            in_run = self._in_run
            slow = self._slow
            runs = self._runs
            live = self._live
            loras = self._loras
            for i in self._dirty:
                # Inside a closed-form run the KV columns are recomputed when read (`_refresh_kv`).
                running, waiting, used, total, pending, queries, hits, end = live[i](now)
                runs[i] = None
                if end is None:
                    in_run.discard(i)
                    slow.discard(i)
                    end = used
                elif end < 0:
                    in_run.discard(i)
                    slow.add(i)
                    end = total
                else:
                    in_run.add(i)
                    slow.discard(i)
                table.set_gauges(i, now, running, waiting, used, total, pending, queries, hits, end)
                lora = loras[i]
                if lora is not None:
                    table.set_adapters(i, lora.state())
            self._dirty.clear()
        table.time.fill(now)
        self._kv_now = now
        table.kv_stale = bool(self._in_run or self._slow)

    def _refresh_kv(self) -> None:
        """KV usage at `_kv_now` of the engines inside a decode run (Engine._catch_up, for all rows at once)."""
        table = self.snapshot_table
        now = self._kv_now
        rows = np.fromiter(self._in_run, np.int64, len(self._in_run))
        if len(rows):
            cache, engines = self._runs, self.engines
            runs = []
            for i in rows.tolist():
                lz = cache[i]
                if lz is None:
                    lz = cache[i] = engines[i].lazy_kv()
                runs.append(lz)
            start, c0, c1 = np.array([r[:3] for r in runs]).T
            steps, sb, other, held, dq, d = np.array([r[3:9] for r in runs], np.int64).T
            dt = now - start
            b = c0 - c1 / 2
            pos = c1 > 0
            with np.errstate(divide="ignore", invalid="ignore"):
                guess = np.where(pos, (np.sqrt(b * b + 2 * c1 * dt) - b) / np.where(pos, c1, 1.0), dt / c0)
            m = np.clip(np.floor(guess), 0, steps)

            def ends(k: np.ndarray) -> np.ndarray:  # Engine._affine_elapsed, same operation order
                return start + (k * c0 + c1 * k * (k - 1) / 2)

            while True:
                over = (m > 0) & (ends(m) > now)
                if not over.any():
                    break
                m -= over
            while True:
                under = (m < steps) & (ends(m + 1) <= now)
                if not under.any():
                    break
                m += under
            k = np.minimum(m.astype(np.int64) + 1, steps)
            hist = np.array([r[10] for r in runs], np.int64)
            bs = hist.shape[1]
            # suffix[m] = sum(hist[bs - m:]): cumulative sums of the reversed histogram, 0 for m = 0
            suffix = np.concatenate([np.zeros((len(rows), 1), np.int64), np.cumsum(hist[:, ::-1], axis=1)], axis=1)
            q, r = np.divmod(sb + k, bs)
            blocks = dq + d * q + suffix[np.arange(len(rows)), r]
            table.set_kv(rows, other + np.maximum(held, blocks))
        for i in self._slow:
            used = self.engines[i].gauges(now)[2]
            table.set_kv(np.array([i]), np.array([used]))
        table.kv_stale = False

    def run(self, requests: Sequence[Request], progress: Callable[[int], None] | None = None) -> float:
        """Simulate until every request has finished; returns the simulated end time."""
        engines = self.engines
        router = self.router
        heap: list[tuple[float, int, int, int]] = []
        versions = [0] * len(engines)
        seq = 0
        live = router.needs_snapshots and self.interval <= 0
        periodic = router.needs_snapshots and self.interval > 0
        snaps = self.snapshot_table
        dirty = self._dirty
        if periodic:
            self._scrape_all(0.0)
        else:
            self._refresh_live(0.0)
        next_refresh = (self.phase or self.interval) if periodic else math.inf
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
                self._scrape_all(t)
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
                dirty.add(i)
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
                self._refresh_live(t)
            i = router.route(req, snaps, t)
            eng = engines[i]
            try:
                eng.add(req, t)
            except ValueError as e:
                req.status = Status.ABORTED
                self.rejected.append((req, str(e)))
                continue
            router.on_dispatch(req, i, t)
            dirty.add(i)
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
