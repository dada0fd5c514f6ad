"""Static-key queues: the shared machinery of fcfs, priority, sjf and sjf-aging, with the starvation guard.

A policy here only says how to rank a request (`key`); the key is fixed at push time, so the order of queued
requests never changes with time alone and one binary heap serves every verb in O(log n). Removal is lazy:
`_live` maps a request id to the sequence number of its one valid heap entry, and stale entries are dropped
when they surface (or by a rebuild once they outnumber the live ones), so `remove` is O(1).

The `max_wait_s` guard (every keyed policy has it) bounds starvation: a request that has waited
`max_wait_s` since its arrival is *overdue*, and overdue requests are served oldest first, on a share
`guard_share` of the admissions made while any is overdue (1 = all of them, before anything else).
Bound: once overdue, a request is overtaken by no later arrival among the overdue, so it is admitted within
(B + 1) / guard_share admissions, B the overdue requests older than it. With `guard_share` 1, capacity (the
engine keeps admitting) and no older overdue backlog, it goes next: it waits `max_wait_s` plus at most one
scheduling step. A share below 1 keeps the policy's own order for the rest of the admissions, which matters
beyond saturation, where every request eventually becomes overdue and a strict guard degrades to FCFS.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from pydantic import Field

from llmsched.core.registry import Params
from llmsched.core.types import Request
from llmsched.policies.request.base import RequestPolicy

Key = tuple[Any, ...]
Entry = tuple[Key, int, Request]


class GuardParams(Params):
    max_wait_s: float | None = Field(
        None,
        gt=0,
        description="starvation guard: requests waiting this long since arrival go first, oldest first",
    )
    guard_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="fraction of admissions the guard may take while requests are overdue (1 = all)",
    )


class KeyedQueue(RequestPolicy):
    """A heap on `key(req)` with lazy deletion, `requeue` at the original key, and the max-wait guard."""

    Params = GuardParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._heap: list[Entry] = []
        self._old: list[Entry] = []  # (arrival, rid) heap, only with the guard on
        self._live: dict[int, int] = {}  # rid -> seq of its one valid entry
        self._seq = itertools.count()
        self._configure()

    def _configure(self) -> None:
        self._max_wait: float | None = getattr(self.params, "max_wait_s", None)
        self._share: float = getattr(self.params, "guard_share", 1.0)
        self._credit = 0.0
        # With the guard on, the head can change with time alone (a request becomes overdue).
        self.time_invariant = self._max_wait is None and type(self).time_invariant  # type: ignore[misc]

    def set_params(self, **params: Any) -> None:
        super().set_params(**params)
        self._configure()
        if self._max_wait is not None and len(self._old) < len(self._live):
            self._rebuild()

    def key(self, req: Request) -> Key:
        """Sort key, smaller first; fixed at push time (stored in `req.policy_data` for `requeue`)."""
        raise NotImplementedError

    # -- verbs -----------------------------------------------------------------------------------------
    def push(self, req: Request, now: float) -> None:
        k = self.key(req)
        req.policy_data = k
        self._insert(k, req)

    def requeue(self, req: Request, now: float) -> None:
        k = req.policy_data
        self._insert(k if isinstance(k, tuple) else self.key(req), req)

    def _insert(self, k: Key, req: Request) -> None:
        seq = next(self._seq)
        self._live[req.rid] = seq
        heapq.heappush(self._heap, (k, seq, req))
        if self._max_wait is not None:
            heapq.heappush(self._old, ((req.arrival, req.rid), seq, req))

    def _head(self, heap: list[Entry]) -> Entry | None:
        live = self._live
        while heap:
            e = heap[0]
            if live.get(e[2].rid) == e[1]:
                return e
            heapq.heappop(heap)
        return None

    def _choose(self, now: float) -> tuple[list[Entry], Entry, bool] | None:
        """(heap, entry, whether a request is overdue); the guard's turn comes by its admission credit."""
        overdue = False
        if self._max_wait is not None:
            old = self._head(self._old)
            overdue = old is not None and now - old[2].arrival >= self._max_wait
            if overdue and self._credit + self._share >= 1.0 - 1e-9:
                return self._old, old, True  # type: ignore[return-value]
        e = self._head(self._heap)
        return None if e is None else (self._heap, e, overdue)

    def peek(self, now: float) -> Request | None:
        c = self._choose(now)
        return None if c is None else c[1][2]

    def pop(self, now: float) -> Request | None:
        c = self._choose(now)
        if c is None:
            return None
        heap, e, overdue = c
        if heap is self._old:
            self._credit += self._share - 1.0
        elif overdue:
            self._credit += self._share
        heapq.heappop(heap)
        del self._live[e[2].rid]
        if heap is self._old and len(self._heap) + len(self._old) > 4 * len(self._live) + 128:
            self._rebuild()  # entries popped through the guard leave stale twins in the main heap
        return e[2]

    def remove(self, req: Request) -> bool:
        if self._live.pop(req.rid, None) is None:
            return False
        if len(self._heap) + len(self._old) > 4 * len(self._live) + 128:
            self._rebuild()
        return True

    def _rebuild(self) -> None:
        """Drop stale entries in one pass (keeps memory bounded under many cancellations)."""
        live = self._live
        self._heap = [e for e in self._heap if live.get(e[2].rid) == e[1]]
        heapq.heapify(self._heap)
        if self._max_wait is not None:
            self._old = [((e[2].arrival, e[2].rid), e[1], e[2]) for e in self._heap]
            heapq.heapify(self._old)
        else:
            self._old = []

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, req: Request) -> bool:
        return req.rid in self._live
