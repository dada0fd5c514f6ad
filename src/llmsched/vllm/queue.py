"""vLLM's `RequestQueue` interface over any of our request policies (the waiting queue of `llmsched.vllm.Scheduler`).

vLLM's scheduler talks to its waiting queue with ten verbs; each maps onto one verb of our `RequestPolicy`,
which works on our own `Request` objects. The adapter keeps one *mirror* `Request` per vLLM request while
vLLM knows it (`rid` an enqueue counter, `arrival` vLLM's `arrival_time`, `prompt_len`, `output_len` =
`max_tokens`, `priority`; `shell_data` points back at the vLLM request):

- `add_request` -> `push` (a new request, or a streaming session's next turn);
- `peek_request` / `pop_request` -> `peek` / `pop` at the step's `now`: vLLM admits by peek-then-pop, and our
  policies promise that `pop(now)` returns what `peek(now)` showed, so the scheduler fixes `now` for the
  whole of `schedule()` (`begin_step` / `end_step`);
- `prepend_request` (vLLM calls it only to re-queue a preempted request) -> `requeue`, which restores the
  request's original place (vLLM's FCFS deque puts it at the front, which under FCFS is the same place: the
  preempted request is the latest admitted, so it is older than everything still waiting);
- `prepend_requests` (requests popped and skipped in this step: waiting for a grammar, a LoRA slot, a remote
  KV load...) -> `requeue` of each, i.e. back in place;
- `remove_request(s)` -> `remove`; `__len__`/`__bool__` -> `len`; `__iter__` -> the policy's order.

Empty `peek_request`/`pop_request` raise `IndexError` as vLLM's queues do.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from vllm.v1.core.sched.request_queue import RequestQueue
from vllm.v1.request import Request as VllmRequest

from llmsched.core.types import Request, Status
from llmsched.policies.request.base import RequestPolicy
from llmsched.policies.request.keyed import KeyedQueue


class PolicyQueue(RequestQueue):
    """A vLLM waiting queue ordered by one of our request policies."""

    def __init__(self, policy: RequestPolicy, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.clock = clock
        self._mirrors: dict[str, Request] = {}  # vLLM request id -> mirror, from enqueue to finish
        self._ids = itertools.count()
        self._step_now: float | None = None

    # -- time ------------------------------------------------------------------------------------------
    def now(self) -> float:
        """The current step's time inside `schedule()`, else the clock (vLLM's arrival_time base)."""
        return self._step_now if self._step_now is not None else self.clock()

    def begin_step(self, now: float) -> None:
        self._step_now = now

    def end_step(self) -> None:
        self._step_now = None

    # -- mirrors ---------------------------------------------------------------------------------------
    def mirror(self, request: VllmRequest) -> Request:
        """Our Request standing for `request` (created on first sight)."""
        m = self._mirrors.get(request.request_id)
        if m is None or m.shell_data is not request:
            m = Request(
                rid=next(self._ids),
                arrival=float(request.arrival_time),
                prompt_len=int(request.num_prompt_tokens),
                output_len=int(request.max_tokens),
                priority=int(request.priority),
                shell_data=request,
            )
            self._mirrors[request.request_id] = m
        return m

    def get_mirror(self, request_id: str) -> Request | None:
        return self._mirrors.get(request_id)

    def forget(self, request_id: str) -> Request | None:
        """Drop the mirror of a request vLLM has finished with; returns it."""
        return self._mirrors.pop(request_id, None)

    # -- vLLM's RequestQueue ---------------------------------------------------------------------------
    def add_request(self, request: VllmRequest) -> None:
        m = self.mirror(request)
        m.prompt_len = int(request.num_prompt_tokens)  # a streaming session's next turn grows the prompt
        m.status = Status.WAITING
        self.policy.push(m, self.now())

    def pop_request(self) -> VllmRequest:
        m = self.policy.pop(self.now())
        if m is None:
            raise IndexError("pop from an empty queue")
        return m.shell_data  # type: ignore[return-value]

    def peek_request(self) -> VllmRequest:
        m = self.policy.peek(self.now())
        if m is None:
            raise IndexError("peek from an empty queue")
        return m.shell_data  # type: ignore[return-value]

    def prepend_request(self, request: VllmRequest) -> None:
        m = self.mirror(request)
        m.status = Status.PREEMPTED
        m.num_preemptions += 1
        m.est_cached = 0
        self.policy.requeue(m, self.now())

    def prepend_requests(self, requests: Iterable[VllmRequest]) -> None:
        now = self.now()
        for r in requests:
            self.policy.requeue(self.mirror(r), now)

    def remove_request(self, request: VllmRequest) -> None:
        m = self._mirrors.get(request.request_id)
        if m is None or m.shell_data is not request or not self.policy.remove(m):
            raise ValueError(f"request {request.request_id!r} is not in the waiting queue")

    def remove_requests(self, requests: Iterable[VllmRequest]) -> None:
        for r in requests:
            m = self._mirrors.get(r.request_id)
            if m is not None and m.shell_data is r:
                self.policy.remove(m)

    def __bool__(self) -> bool:
        return len(self.policy) > 0

    def __len__(self) -> int:
        return len(self.policy)

    def __iter__(self) -> Iterator[VllmRequest]:
        return iter([m.shell_data for m in self._ordered()])  # type: ignore[misc]

    def __getitem__(self, i: int) -> VllmRequest:
        """Positional access in policy order (vLLM's FCFS queue is a deque; its tests index it)."""
        return list(self)[i]

    def _ordered(self) -> list[Request]:
        """Queued mirrors in the order the policy would admit them now, without touching the policy."""
        if isinstance(self.policy, KeyedQueue) and self.policy._max_wait is None:
            queued = [m for m in self._mirrors.values() if m in self.policy]
            return sorted(queued, key=lambda m: m.policy_data)  # type: ignore[arg-type,return-value]
        # Any other policy: drain a copy (the mirrors themselves are shared, not copied).
        memo: dict[int, Any] = {id(m): m for m in self._mirrors.values()}
        memo.update({id(m.shell_data): m.shell_data for m in self._mirrors.values()})
        twin = copy.deepcopy(self.policy, memo)
        now = self.now()
        out = []
        while (m := twin.pop(now)) is not None:
            out.append(m)
        return out

    def __repr__(self) -> str:
        return f"PolicyQueue({self.policy.name}, {len(self)} waiting)"
