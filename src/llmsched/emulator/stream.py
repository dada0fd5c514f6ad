"""The hand-off between the engine loop and one HTTP handler: a counter of generated tokens and a wake-up.

The engine loop only counts tokens (`push`) and marks the end (`close`); the handler turns counts into text
when it wakes. So the loop's cost per token is an integer add, whatever the wire format, and a handler that
falls behind catches up in one write of several chunks instead of queueing one object per token.
"""

from __future__ import annotations

import asyncio

from llmsched.core.types import Request


class TokenStream:
    """Tokens generated for one request, read by exactly one consumer."""

    __slots__ = ("req", "generated", "done", "finish_reason", "last_token_time", "_waiter")

    def __init__(self, req: Request) -> None:
        self.req = req
        self.generated = 0  # output tokens produced so far
        self.done = False
        self.finish_reason: str | None = None  # "length", "abort" (client gone or server stopping), "error"
        self.last_token_time = -1.0  # emulated time of the latest token (for inter-token latency)
        self._waiter: asyncio.Future[None] | None = None

    def push(self, n: int, now: float) -> None:
        self.generated += n
        self.last_token_time = now
        self._wake()

    def close(self, reason: str) -> None:
        if not self.done:
            self.done = True
            self.finish_reason = reason
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def wait(self, seen: int) -> None:
        """Return once more than `seen` tokens exist or the stream is done."""
        while self.generated <= seen and not self.done:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
