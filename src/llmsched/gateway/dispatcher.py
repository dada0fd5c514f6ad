"""The gateway's decisions, sans-I/O: admission, dispatch, retry targets, backend membership and health.

The asyncio shell (`gateway.server`) only moves bytes: it asks this object what to do and reports what
happened, passing the time. The same `RequestPolicy` and `Router` objects as in the simulator make the calls:
the policy orders the admission queue, the router picks the backend among those that may take a request.

Backends keep their index for life (the router's per-instance accounting is indexed by it); a removed backend
is a tombstone that is never eligible again. Behind several models (`gateway.pools`), one `Dispatcher` per model
pool shares the gateway's backend list (`backends=`) and takes only the backends that serve its model (`serves=`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from llmsched.core.snapshots import SnapshotTable
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.gateway.breaker import BreakerState, CircuitBreaker
from llmsched.gateway.scrape import empty_snapshot
from llmsched.policies.instance.base import Router
from llmsched.policies.request.base import RequestPolicy


@dataclass(slots=True)
class Backend:
    index: int
    url: str
    breaker: CircuitBreaker
    snapshot: InstanceSnapshot
    in_flight: int = 0
    draining: bool = False
    removed: bool = False
    scraped: bool = False
    served: int = 0
    failed: int = 0
    # Model ids it serves (base models and LoRA adapters, from its /v1/models or pinned in the config);
    # None = not known (never answered /v1/models usably): it then serves the unnamed pool (gateway.pools).
    models: frozenset[str] | None = None
    cards: dict[str, dict[str, Any]] = field(default_factory=dict)  # its /v1/models cards by id
    probed: bool = False  # its models were read (an answer to /v1/models, or pinned)

    @property
    def state(self) -> str:
        if self.removed:
            return "removed"
        if self.draining:
            return "draining"
        return self.breaker.state.value


class Dispatcher:
    def __init__(
        self,
        policy: RequestPolicy,
        router: Router,
        max_in_flight: int = 256,
        queue_bound: int = 4096,
        breaker_factory: Callable[[], CircuitBreaker] = CircuitBreaker,
        *,
        backends: list[Backend] | None = None,
        serves: Callable[[Backend], bool] | None = None,
    ) -> None:
        self.policy = policy
        self.router = router
        self.max_in_flight = max_in_flight
        self.queue_bound = queue_bound
        self.breaker_factory = breaker_factory
        # Shared with the other model pools when given (their owner adds backends and calls `sync`).
        self.backends: list[Backend] = [] if backends is None else backends
        self.serves = serves  # None: every backend serves this dispatcher's requests
        # What the router reads: the last scrape of each backend, `healthy` = eligible for this decision. One
        # row changes per scrape, so the router's work per request does not grow with the backend count.
        self.table = SnapshotTable()
        self.rejected = 0
        self.retried = 0
        self._in_flight = 0  # requests it dispatched and not finished (the gateway's total with one pool)
        self.sync()

    # -- membership -------------------------------------------------------------------------------------
    def add_backend(self, url: str, now: float) -> Backend:
        b, new = add_backend_to(self.backends, url, self.breaker_factory, now)
        if new:
            self.sync()
        return b

    def sync(self) -> None:
        """Give backends added to the (shared) list a row in the table and a slot in the router."""
        n = len(self.backends)
        for b in self.backends[self.table.n:]:
            self.table.put(b.snapshot)
        if n:
            self.router.resize(n)

    def find(self, url: str) -> Backend | None:
        return find_backend(self.backends, url)

    def drain(self, url: str) -> Backend:
        """No new requests go to `url`; in-flight ones finish."""
        return drain_backend(self.backends, url)

    def reap(self) -> list[Backend]:
        """Remove drained backends that have nothing in flight; returns those removed now."""
        out = []
        for b in self.backends:
            if b.draining and not b.removed and b.in_flight == 0:
                b.removed = True
                out.append(b)
        return out

    def live(self) -> list[Backend]:
        return [b for b in self.backends if not b.removed]

    # -- eligibility ------------------------------------------------------------------------------------
    def _eligible(self, b: Backend, now: float, cap: bool) -> bool:
        return (
            not b.removed
            and not b.draining
            and (not cap or b.in_flight < self.max_in_flight)
            and b.breaker.available(now)
            and (self.serves is None or self.serves(b))
        )

    def has_capacity(self, now: float) -> bool:
        for b in self.backends:  # noqa: SIM110 - a loop, not any(genexpr): these run several times a request
            if self._eligible(b, now, True):
                return True
        return False

    def any_usable(self, now: float) -> bool:
        """Is there a backend that could ever take this request (ignoring the in-flight cap)?"""
        serves = self.serves
        for b in self.backends:  # noqa: SIM110
            if not b.removed and not b.draining and (serves is None or serves(b)):
                return True
        return False

    # -- admission --------------------------------------------------------------------------------------
    def submit(self, req: Request, now: float) -> bool:
        """Queue `req`; False (-> 429) when the queue is at its bound and no backend has room."""
        if len(self.policy) >= self.queue_bound and not self.has_capacity(now):
            self.rejected += 1
            return False
        self.policy.push(req, now)
        return True

    def cancel(self, req: Request) -> bool:
        """Client gone while queued."""
        return self.policy.remove(req)

    def take_all(self, now: float) -> list[Request]:
        """Empty the queue (every backend is gone or draining: nothing queued can ever be served)."""
        out = []
        while (req := self.policy.pop(now)) is not None:
            out.append(req)
        return out

    @property
    def queued(self) -> int:
        return len(self.policy)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def dispatch(self, now: float, limit: int = 1 << 62) -> list[tuple[Request, int]]:
        """Pop queued requests (at most `limit`) while some backend has room; each goes where the router says."""
        out: list[tuple[Request, int]] = []
        while self.policy and len(out) < limit and self.has_capacity(now):
            req = self.policy.pop(now)
            if req is None:
                break
            i = self.route(req, now)
            if i is None:  # cannot happen while has_capacity holds; keep the request rather than lose it
                self.policy.requeue(req, now)
                break
            if req.first_scheduled < 0:
                req.first_scheduled = now
            out.append((req, i))
        return out

    def route(self, req: Request, now: float, exclude: frozenset[int] = frozenset(), cap: bool = True) -> int | None:
        """Pick and charge a backend for `req` (None if none is eligible); the router decides among the eligible."""
        ok = [self._eligible(b, now, cap) and b.index not in exclude for b in self.backends]
        if True not in ok:
            return None
        table = self.table
        seen = table.healthy.tolist()
        if ok != seen:  # plain lists: numpy's small-array calls cost several us a request here
            for k, v in enumerate(ok):
                if v != seen[k]:
                    table.set_healthy(k, v)
            # Down is the breaker open (failures), not merely ineligible (at its cap, draining, excluded on a
            # retry): a router forgets a backend's cache when it comes back up, never when it frees a slot.
            up = table.up
            for b in self.backends:
                u = b.breaker.state is not BreakerState.OPEN
                if u != up[b.index]:
                    table.set_up(b.index, u)
        i = self.router.route(req, table, now)
        if not (0 <= i < len(ok)) or not ok[i]:
            # The router fell back to an ineligible instance (its contract allows it when none is healthy
            # by its own lights); overrule it with the least loaded eligible one and count the case.
            self.router.decisions["gateway-override"] += 1
            i = min((b for b in self.backends if ok[b.index]), key=lambda b: b.in_flight).index
        b = self.backends[i]
        b.breaker.acquire(now)
        b.in_flight += 1
        self._in_flight += 1
        req.instance = i
        self.router.on_dispatch(req, i, now)
        return i

    def retry(self, req: Request, failed: int, tried: frozenset[int], now: float) -> int | None:
        """A new backend for a request that failed on `failed` before its first byte; None: give up."""
        i = self.route(req, now, exclude=tried | {failed}, cap=False)
        if i is not None:  # count re-dispatches, not give-ups
            self.retried += 1
        return i

    # -- outcomes ---------------------------------------------------------------------------------------
    def first_token(self, req: Request, i: int, now: float) -> None:
        if req.first_token < 0:
            req.first_token = now
        self.router.on_first_token(req, i, now)
        self.backends[i].breaker.success(now)

    def finish(self, req: Request, i: int, now: float, ok: bool, backend_fault: bool | None = None) -> None:
        """`req` left backend `i`: completed (`ok`) or failed; `backend_fault` (default: not ok) feeds the breaker.

        A client that cancels is neither a success nor a backend fault.
        """
        b = self.backends[i]
        if b.in_flight > 0:
            b.in_flight -= 1
            self._in_flight -= 1
        self.router.on_finish(req, i, now)
        fault = (not ok) if backend_fault is None else backend_fault
        if fault:
            b.failed += 1
            b.breaker.failure(now)
        elif ok:
            b.served += 1
            b.breaker.success(now)
            req.finish = now
            self.policy.on_finish(req, now)
        elif b.breaker.state is BreakerState.HALF_OPEN:
            b.breaker.probing = False  # a cancelled probe proves nothing; let another one through

    # -- health -----------------------------------------------------------------------------------------
    def scraped(self, i: int, snap: InstanceSnapshot | None, now: float) -> None:
        """A scrape or health probe of backend `i` succeeded (`snap` may be None for a bare /health)."""
        scrape_succeeded(self.backends[i], snap, now)
        self.refresh(i, snap is not None, now)

    def refresh(self, i: int, wrote: bool, now: float, notify: bool = True) -> None:
        """Backend `i`'s scrape reaches the table (`wrote`: a new snapshot) and, with `notify`, the router."""
        if wrote:
            self.table.put(replace(self.backends[i].snapshot, healthy=bool(self.table.healthy[i])),
                           up=bool(self.table.up[i]))
        if notify:
            self.router.on_snapshots(self.table, now)

    def scrape_failed(self, i: int, now: float) -> None:
        b = self.backends[i]
        b.breaker.failure(now)


def add_backend_to(backends: list[Backend], url: str, breaker_factory: Callable[[], CircuitBreaker],
                   now: float) -> tuple[Backend, bool]:
    """The live backend at `url` (re-adding a draining one undoes the drain), or a new one appended (True)."""
    url = url.rstrip("/")
    live = find_backend(backends, url)
    if live is not None:
        live.draining = False
        return live, False
    b = Backend(len(backends), url, breaker_factory(), empty_snapshot(len(backends), now))
    backends.append(b)
    return b, True


def scrape_succeeded(b: Backend, snap: InstanceSnapshot | None, now: float) -> None:
    """Backend `b` answered its scrape (`snap`: its metrics) or health probe (None)."""
    if snap is not None:
        b.snapshot = replace(snap, instance=b.index)
        b.scraped = True
    if b.breaker.available(now):
        b.breaker.success(now)


def find_backend(backends: list[Backend], url: str) -> Backend | None:
    url = url.rstrip("/")
    return next((b for b in backends if b.url == url and not b.removed), None)


def drain_backend(backends: list[Backend], url: str) -> Backend:
    """No new requests go to `url`; in-flight ones finish. KeyError if it is not a live backend."""
    b = find_backend(backends, url)
    if b is None:
        raise KeyError(url)
    b.draining = True
    return b
