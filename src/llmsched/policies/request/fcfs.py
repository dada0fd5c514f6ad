"""First come, first served: vLLM's default waiting queue."""

from __future__ import annotations

from llmsched.core.types import Request
from llmsched.policies.request.base import REQUEST_POLICIES
from llmsched.policies.request.keyed import Key, KeyedQueue


@REQUEST_POLICIES.register("fcfs")
class FCFS(KeyedQueue):
    """Arrival order, keyed on (arrival, rid) so that `requeue` restores a preempted request's place.

    The `max_wait_s` guard is accepted for uniformity; FCFS already serves the oldest request first.
    """

    def key(self, req: Request) -> Key:
        return (req.arrival, req.rid)
