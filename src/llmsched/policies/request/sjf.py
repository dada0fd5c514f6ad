"""Shortest job first on prompt work: the request with the fewest prompt tokens to compute goes first.

Prompt length, not output length, is the job size: it is known at arrival and it sets the prefill cost that
blocks everything queued behind it (head-of-line blocking is a prefill problem). When the engine estimated the
request's cached prefix (`req.est_cached`), only the uncached part counts: a long prompt that is mostly in the
prefix cache is a short job.
"""

from __future__ import annotations

from pydantic import Field

from llmsched.core.types import Request
from llmsched.policies.request.base import REQUEST_POLICIES
from llmsched.policies.request.keyed import GuardParams, Key, KeyedQueue


class SJFParams(GuardParams):
    use_uncached: bool = Field(
        True, description="rank by uncached prompt tokens when the engine estimated them"
    )


@REQUEST_POLICIES.register("sjf")
class SJF(KeyedQueue):
    """Key (job size, arrival, rid): shortest first, ties by arrival."""

    Params = SJFParams

    def size(self, req: Request) -> int:
        return req.uncached_prompt if self.params.use_uncached else req.prompt_len  # type: ignore[attr-defined]

    def key(self, req: Request) -> Key:
        return (self.size(req), req.arrival, req.rid)
