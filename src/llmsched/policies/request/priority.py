"""Priority scheduling with vLLM's semantics: lower `priority` value first, ties by arrival."""

from __future__ import annotations

from llmsched.core.types import Request
from llmsched.policies.request.base import REQUEST_POLICIES
from llmsched.policies.request.keyed import Key, KeyedQueue


@REQUEST_POLICIES.register("priority")
class Priority(KeyedQueue):
    """Key (priority, arrival, rid), as vLLM's `--scheduling-policy priority` orders its waiting queue."""

    preempt_by_priority = True

    def key(self, req: Request) -> Key:
        return (req.priority, req.arrival, req.rid)
