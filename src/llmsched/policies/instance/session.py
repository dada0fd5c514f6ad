"""Session affinity by consistent hashing (production-stack `session`, vllm-router `consistent_hash`).

Each healthy instance owns `vnodes` points on a 64-bit ring (blake2b, stable across processes, unlike
Python's salted str hash); a session goes to the first point clockwise of its hash, so it stays on one
instance and losing an instance only moves that instance's sessions. Requests with no session go to the
fewest in flight.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

from pydantic import Field

from llmsched.core.registry import Params
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import ROUTERS, Router
from llmsched.policies.instance.tracked import argmin_tiebreak


def stable_hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class SessionParams(Params):
    vnodes: int = Field(64, ge=1, description="ring points per instance (more = more even split)")


@ROUTERS.register("session")
class SessionRouter(Router):
    Params = SessionParams

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._ring_for: tuple[int, ...] | None = None
        self._points: list[int] = []
        self._owners: list[int] = []
        self._cache: dict[str, int] = {}

    def _ring(self, members: tuple[int, ...]) -> None:
        if members == self._ring_for:
            return
        pts = sorted((stable_hash(f"{i}#{v}"), i) for i in members for v in range(self.params.vnodes))
        self._points = [p for p, _ in pts]
        self._owners = [i for _, i in pts]
        self._ring_for = members
        self._cache = {}

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        if len(snapshots) > self.num_instances_:
            self.resize(len(snapshots))
        cands = self.healthy(snapshots)
        if req.session is None:
            self.decisions["no-session"] += 1
            return argmin_tiebreak(self.in_flight_, cands, [0] * self.num_instances_)
        self._ring(tuple(cands))
        hit = self._cache.get(req.session)
        if hit is None:
            k = bisect.bisect_left(self._points, stable_hash(req.session)) % len(self._points)
            hit = self._cache[req.session] = self._owners[k]
            if len(self._cache) > 1 << 16:  # a memo, not state: safe to drop
                self._cache.clear()
        self.decisions["sticky"] += 1
        return hit
