"""First come, first served: vLLM's default waiting queue."""

from __future__ import annotations

import heapq

from llmsched.core.types import Request
from llmsched.policies.request.base import REQUEST_POLICIES, RequestPolicy


@REQUEST_POLICIES.register("fcfs")
class FCFS(RequestPolicy):
    """Arrival order. A heap keyed on (arrival, rid) so that `requeue` restores a preempted request's place."""

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._heap: list[tuple[float, int, Request]] = []
        self._removed: set[int] = set()

    def push(self, req: Request, now: float) -> None:
        heapq.heappush(self._heap, (req.arrival, req.rid, req))

    requeue = push

    def _clean(self) -> None:
        heap = self._heap
        while heap and heap[0][1] in self._removed:
            self._removed.discard(heapq.heappop(heap)[1])

    def peek(self, now: float) -> Request | None:
        if self._removed:
            self._clean()
        return self._heap[0][2] if self._heap else None

    def pop(self, now: float) -> Request | None:
        if self._removed:
            self._clean()
        return heapq.heappop(self._heap)[2] if self._heap else None

    def remove(self, req: Request) -> bool:
        if any(e[1] == req.rid for e in self._heap) and req.rid not in self._removed:
            self._removed.add(req.rid)
            return True
        return False

    def __len__(self) -> int:
        return len(self._heap) - len(self._removed)
