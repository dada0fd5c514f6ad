"""An asyncio event loop on a virtual clock, for running a live stack (client, gateway, emulators over
loopback HTTP, all in one process) immune to CPU contention.

`loop.time()` is virtual. When the loop would sleep until its next timer, it first polls the sockets (a
short real wait, `io_grace_s`, for loopback data still in the kernel); only if nothing is ready does the
virtual clock jump to that timer. So time advances only while every task is waiting on a timer: the
emulators' iterations, the client's arrival sleeps and the gateway's scrape interval keep their virtual
durations however slow the machine is, and nothing that is ready to run is ever made to look late.
Everything that reads the clock must use `loop.time()` (the emulator's driver does; `Gateway.now` reads
`time.monotonic`, so callers point it at the loop, see `run_virtual`). Threads (the recorder's writer) run on
real time, which is fine for them: they only move bytes.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _VirtualSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._vloop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        events = super().select(0)
        if events or timeout == 0:
            return events
        events = super().select(self._vloop.io_grace_s)
        if events:
            return events
        if timeout is None:  # no timer: only I/O (or another thread) can wake us; wait for it for real
            return super().select(None)
        self._vloop.advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self, io_grace_s: float = 0.0005) -> None:
        self._vt = 0.0
        self.io_grace_s = io_grace_s
        super().__init__(_VirtualSelector(self))
        self._clock_resolution = 1e-9

    def time(self) -> float:
        return self._vt

    def advance(self, dt: float) -> None:
        if dt > 0:
            self._vt += dt


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion on a fresh `VirtualClockLoop`."""
    loop = VirtualClockLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(coro)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
