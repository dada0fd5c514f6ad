"""The instance-level interface: a router picks the engine instance for each request.

Sans-I/O: `route` gets the request, the latest snapshots of every instance (possibly stale: they are
refreshed at the shell's metrics interval) and the time. Between refreshes the router corrects the snapshots
with its own in-flight accounting, kept by `on_dispatch` / `on_finish`, exactly as a gateway must.

Contract (the shells rely on it):
- `route(req, snapshots, now) -> int` returns an index into `snapshots` (one per instance, in instance
  order; unhealthy instances are never chosen while a healthy one exists). Must not mutate anything that
  `on_dispatch` would not undo: a shell may route and then fail to dispatch (backend down before first byte)
  and route again.
- `on_dispatch(req, instance, now)`: the request was sent there.
- `on_first_token(req, instance, now)`: its prefill is done (frees the router's pending-prefill estimate).
- `on_finish(req, instance, now)`: it finished or failed there.
- `on_snapshots(snapshots, now)`: fresh metrics arrived; in-flight counts seen by them are reconciled.
- `needs_snapshots`: False for routers that never read snapshots (round robin), so the simulator need not
  bring every engine up to date at each arrival.
- `decisions`: counters of decision reasons (e.g. lmetric fallbacks), exported by the gateway's /metrics.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from llmsched.core.registry import Configurable, Registry
from llmsched.core.types import InstanceSnapshot, Request


class Router(Configurable):
    needs_snapshots: ClassVar[bool] = True

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.num_instances_ = 0
        self.in_flight_: list[int] = []  # dispatched and not finished, per instance
        self.pending_prefill_: list[int] = []  # uncached prompt tokens dispatched and not yet prefilled
        self.decisions: Counter[str] = Counter()
        # Routers that draw at random declare a `seed` parameter and get their Generator here.
        seed = getattr(self.params, "seed", None)
        self.rng_ = np.random.default_rng(seed) if seed is not None else None
        self._charged: dict[int, int] = {}

    def resize(self, n: int) -> None:
        """Instances were added (or the router is new): grow the per-instance accounting."""
        while self.num_instances_ < n:
            self.in_flight_.append(0)
            self.pending_prefill_.append(0)
            self.num_instances_ += 1

    @abstractmethod
    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int: ...

    def prefill_estimate(self, req: Request, instance: int) -> int:
        """New prefill tokens `req` costs on `instance`; prefix-aware routers override with their index."""
        return req.prompt_len

    def on_dispatch(self, req: Request, instance: int, now: float) -> None:
        if instance >= self.num_instances_:
            self.resize(instance + 1)
        tokens = self.prefill_estimate(req, instance)
        self._charged[req.rid] = tokens
        self.in_flight_[instance] += 1
        self.pending_prefill_[instance] += tokens

    def on_first_token(self, req: Request, instance: int, now: float) -> None:
        tokens = self._charged.pop(req.rid, 0)
        self.pending_prefill_[instance] = max(0, self.pending_prefill_[instance] - tokens)

    def on_finish(self, req: Request, instance: int, now: float) -> None:
        self.in_flight_[instance] = max(0, self.in_flight_[instance] - 1)
        if req.rid in self._charged:  # ended before this dispatch's first token: its prefill is still charged
            # (not `req.first_token < 0`: a gateway retry after a first token elsewhere is charged again)
            self.on_first_token(req, instance, now)

    def on_snapshots(self, snapshots: Sequence[InstanceSnapshot], now: float) -> None:  # noqa: B027
        """Fresh metrics: routers that blend snapshots with their own counts may reconcile here."""

    @staticmethod
    def healthy(snapshots: Sequence[InstanceSnapshot]) -> list[int]:
        ok = [s.instance for s in snapshots if s.healthy]
        return ok or [s.instance for s in snapshots]


ROUTERS: Registry[Router] = Registry("router")
