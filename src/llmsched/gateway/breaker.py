"""A per-backend circuit breaker, sans-I/O: time is an argument.

Closed: requests flow; `failure_threshold` consecutive failures open it. Open: the backend is skipped for
`cooldown` seconds, so a dead replica costs one connect timeout per cooldown rather than one per request.
Half-open: one probe (a request or a health scrape) is let through; success closes, failure re-opens.
"""

from __future__ import annotations

from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, cooldown: float = 5.0) -> None:
        if failure_threshold < 1 or cooldown <= 0:
            raise ValueError("failure_threshold must be >= 1 and cooldown > 0")
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probing = False  # a half-open probe is out

    def _tick(self, now: float) -> None:
        if self.state is BreakerState.OPEN and now - self.opened_at >= self.cooldown:
            self.state = BreakerState.HALF_OPEN
            self.probing = False

    def available(self, now: float) -> bool:
        """May a request be sent now? Does not consume the half-open probe (see `acquire`)."""
        self._tick(now)
        if self.state is BreakerState.CLOSED:
            return True
        return self.state is BreakerState.HALF_OPEN and not self.probing

    def acquire(self, now: float) -> bool:
        """Take permission to send one request; in half-open only the first caller gets it."""
        if not self.available(now):
            return False
        if self.state is BreakerState.HALF_OPEN:
            self.probing = True
        return True

    def success(self, now: float) -> None:
        self._tick(now)
        if self.state is BreakerState.OPEN:
            # A request sent before the breaker opened, finishing late: it says nothing about the backend
            # now (a dead backend's last streams complete after its first refused connects).
            return
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.probing = False

    def failure(self, now: float) -> None:
        self._tick(now)
        self.failures += 1
        if self.state is BreakerState.HALF_OPEN or self.failures >= self.failure_threshold:
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.probing = False
