"""The request-level interface: a waiting queue that decides which request is admitted next.

The same object serves as an engine's waiting queue (`engine.Engine`) and as the gateway's admission queue
(`gateway`). It is sans-I/O: every verb takes the current time, nothing reads a clock.

Contract (the engine relies on it):
- `push(req, now)` queues a new request.
- `peek(now)` returns the request `pop(now)` would return, without removing it; None when empty. Calling
  `peek` twice at the same `now` with no change in between returns the same request.
- `pop(now)` removes and returns it.
- `requeue(req, now)` puts back a preempted request at its old position (its original sort key), the way
  vLLM prepends preempted requests to its waiting queue.
- `remove(req)` drops a queued request (client cancelled); returns whether it was queued.
- `on_finish(req, now)` and `on_prefill(tokens, seconds, now)` are feedback from the engine (completion with
  its timestamps; the measured time of a prefill chunk) for learning policies; default no-ops.
- `time_invariant`: True when the order of queued requests does not change with time alone (FCFS, priority,
  SJF). The engine may then skip re-asking the queue while nothing but time changes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from llmsched.core.registry import Configurable, Registry
from llmsched.core.types import Request


class RequestPolicy(Configurable, ABC):
    time_invariant: ClassVar[bool] = True
    # The engine's preemption victim: the last admitted (vLLM FCFS) or, when True, the lowest priority,
    # latest arrival (vLLM's priority scheduling).
    preempt_by_priority: ClassVar[bool] = False

    @abstractmethod
    def push(self, req: Request, now: float) -> None: ...

    @abstractmethod
    def peek(self, now: float) -> Request | None: ...

    @abstractmethod
    def pop(self, now: float) -> Request | None: ...

    @abstractmethod
    def requeue(self, req: Request, now: float) -> None: ...

    @abstractmethod
    def remove(self, req: Request) -> bool: ...

    @abstractmethod
    def __len__(self) -> int: ...

    def on_finish(self, req: Request, now: float) -> None:  # noqa: B027 - optional hook
        """Feedback: `req` finished at `now` with all its timestamps set."""

    def on_prefill(self, tokens: int, seconds: float, now: float) -> None:  # noqa: B027 - optional hook
        """Feedback: the prefill chunks of an iteration, `tokens` new tokens, took `seconds`: the iteration's time
        less its decode part as the cost model prices it (a lone prefill: the whole iteration)."""

    def __bool__(self) -> bool:
        return len(self) > 0


REQUEST_POLICIES: Registry[RequestPolicy] = Registry("request")
