"""EWSJF component 2: dynamic queue routing with bubble queues.

The partition (component 1) leaves gaps between queue ranges, and traffic drifts between two partitions. A
request of size L goes to the last queue i with lo_i <= L when L <= `up_tol` x hi_i (the queue stretches a
little upwards); else to queue i+1 when L >= `low_tol` x lo_{i+1} (or downwards); otherwise it lands in a gap
and a *bubble* queue is created for it, centred on L, so that it is neither lumped with much shorter nor with
much longer requests. Bubbles are cheap and transient: one that has stayed empty for `bubble_ttl` scheduling
rounds is pruned, and at most `max_bubbles` exist (beyond that a request joins the nearest queue in log
distance). The next Refine-and-Prune run absorbs the traffic that created them.

The queue set owns the `LengthQueue` objects; what is inside them (heaps of requests) is the policy's business.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np

from llmsched.policies.request.ewsjf_partition import Partition


class LengthQueue:
    """One EWSJF queue: requests whose size falls in [lo, hi], served oldest first within the queue."""

    __slots__ = ("lo", "hi", "mean", "bubble", "heap", "count", "last_busy", "wu", "wf", "cache")

    def __init__(self, lo: int, hi: int, mean: float, bubble: bool = False, round_: int = 0) -> None:
        self.lo = lo
        self.hi = hi
        self.mean = mean
        self.bubble = bubble
        self.heap: list[tuple[float, int, int, Any]] = []  # (arrival, rid, seq, request), lazily deleted
        self.count = 0  # live requests
        self.last_busy = round_  # last scheduling round in which it held a request
        self.wu = 0.0  # urgency weight for this queue's mean length (set by the policy)
        self.wf = 0.0  # fairness weight
        self.cache: tuple[int, int, float, float] | None = None  # (head seq, score version, A, B)

    def __repr__(self) -> str:
        kind = "bubble" if self.bubble else "queue"
        return f"<{kind} [{self.lo}, {self.hi}] n={self.count}>"


class QueueSet:
    """Ascending length queues with the routing rule, bubble creation/pruning and the variance split."""

    def __init__(
        self, up_tol: float = 1.10, low_tol: float = 0.90, max_bubbles: int = 8, bubble_ttl: int = 50
    ):
        if up_tol < 1 or not 0 < low_tol <= 1:
            raise ValueError(f"need up_tol >= 1 and 0 < low_tol <= 1, got {up_tol}, {low_tol}")
        self.up_tol = up_tol
        self.low_tol = low_tol
        self.max_bubbles = max_bubbles
        self.bubble_ttl = bubble_ttl
        self.queues: list[LengthQueue] = []
        self._los: list[int] = []
        self.num_bubbles = 0
        self.version = 0  # bumped on every structural change (queue indices move)
        self.bubbles_created = 0
        self.bubbles_pruned = 0

    def __len__(self) -> int:
        return len(self.queues)

    def _changed(self) -> None:
        self._los = [q.lo for q in self.queues]
        self.num_bubbles = sum(q.bubble for q in self.queues)
        self.version += 1

    def set_partition(self, part: Partition, round_: int = 0) -> list[LengthQueue]:
        """Replace every queue (bubbles included) by the partition's; returns the old queues to re-route."""
        old = self.queues
        self.queues = [
            LengthQueue(int(lo), int(hi), float(m), False, round_)
            for lo, hi, m in zip(part.lo, part.hi, part.mean, strict=True)
        ]
        self._changed()
        return old

    def route(self, size: int, round_: int) -> LengthQueue:
        """The queue for a request of `size` tokens, creating a bubble in a gap."""
        qs = self.queues
        i = bisect.bisect_right(self._los, size) - 1
        if i >= 0 and size <= self.up_tol * qs[i].hi:
            return qs[i]
        if i + 1 < len(qs) and size >= self.low_tol * qs[i + 1].lo:
            return qs[i + 1]
        if self.num_bubbles >= self.max_bubbles and qs:
            return self.nearest(size)
        b = LengthQueue(size, size, float(size), True, round_)
        qs.insert(i + 1, b)
        self.bubbles_created += 1
        self._changed()
        return b

    def nearest(self, size: int) -> LengthQueue:
        x = math.log1p(size)
        return min(
            self.queues,
            key=lambda q: (
                0.0 if q.lo <= size <= q.hi else min(abs(x - math.log1p(q.lo)), abs(x - math.log1p(q.hi)))
            ),
        )

    def prune_bubbles(self, round_: int) -> int:
        """Drop bubbles empty for `bubble_ttl` rounds; returns how many went."""
        keep = [
            q
            for q in self.queues
            if not (q.bubble and q.count == 0 and round_ - q.last_busy >= self.bubble_ttl)
        ]
        gone = len(self.queues) - len(keep)
        if gone:
            self.queues = keep
            self.bubbles_pruned += gone
            self._changed()
        return gone

    def split(self, q: LengthQueue, at: float) -> tuple[LengthQueue, LengthQueue]:
        """Split queue `q` at length `at` (the cheap between-partitions fix for a too-wide queue)."""
        cut = int(at)
        if not q.lo <= cut < q.hi:
            raise ValueError(f"cannot split {q!r} at {at}")
        i = self.queues.index(q)
        left = LengthQueue(q.lo, cut, (q.lo + cut) / 2, q.bubble, q.last_busy)
        right = LengthQueue(cut + 1, q.hi, (cut + 1 + q.hi) / 2, q.bubble, q.last_busy)
        self.queues[i : i + 1] = [left, right]
        self._changed()
        return left, right

    def overdispersed(
        self, recent: np.ndarray, ratio: float, min_count: int
    ) -> list[tuple[LengthQueue, float]]:
        """Queues whose recent log-length variance exceeds `ratio` x the mean variance, with their split point.

        `recent` holds the sizes routed since the last partition; variance is taken on log(1 + size) as in the
        partition, so that long queues are not split merely because their lengths are large.
        """
        qs = [q for q in self.queues if not q.bubble]
        if len(qs) < 2 or recent.size == 0:
            return []
        los = np.array([q.lo for q in qs])
        idx = np.searchsorted(los, recent, side="right") - 1
        ok = idx >= 0
        idx, x = idx[ok], np.log1p(recent[ok])
        n = np.bincount(idx, minlength=len(qs)).astype(np.float64)
        s1 = np.bincount(idx, weights=x, minlength=len(qs))
        s2 = np.bincount(idx, weights=x * x, minlength=len(qs))
        has = n >= 2
        if has.sum() < 2:
            return []
        mean = np.where(has, s1 / np.maximum(n, 1), 0.0)
        var = np.where(has, s2 / np.maximum(n, 1) - mean * mean, 0.0)
        ref = ratio * var[has].mean()
        out = []
        for j in np.flatnonzero(has & (n >= min_count) & (var > ref)):
            q = qs[j]
            at = float(np.expm1(mean[j]))  # geometric mean, the log-space mean
            if q.lo <= int(at) < q.hi:
                out.append((q, at))
        return out
