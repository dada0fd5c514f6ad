"""All instances' snapshots as columns: what routers read, kept up to date one row at a time.

A shell (simulator or gateway) owns one `SnapshotTable` and writes a row when it learns something new about
that instance (an engine event, a scrape, a health change); every write bumps the row's `version`, so a router
finds what changed since it last looked with one vectorised comparison instead of a pass over instances.
Routers that score every instance read the columns as numpy arrays; the table is also a read-only
`Sequence[InstanceSnapshot]` (rows materialised on demand and cached per version), so routers written
against snapshots work unchanged.

KV usage may be lazy: an engine in the middle of a planned decode run allocates blocks as its iterations
begin, so its usage changes without any event. The simulator registers `kv_refresh` (called with no
argument before the KV columns are read while `kv_stale` is set) instead of recomputing them at every
arrival; `kv_upper` bounds the usage any row can reach before its next write, so a router that only needs to
know whether usage crossed a threshold can skip the refresh.

`pending` is -1 where the source does not export the queued uncached prefill (vLLM's /metrics does not): the
router then keeps its own account (see `policies/instance/tracked.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import overload

import numpy as np

from llmsched.core.types import AdapterState, InstanceSnapshot

NOT_EXPORTED = -1


_INTS = ("running", "waiting", "_free", "total", "pending", "queries", "hits", "free_lower")
UNKNOWN_FREE = 1 << 62  # free_lower of a row whose block count is unknown (never "short of blocks")
_FLOATS = ("time", "_kv", "kv_upper")


class SnapshotTable(Sequence[InstanceSnapshot]):
    """Per-instance snapshot columns. Rows are written with `put` / `set_row`, read as arrays or snapshots.

    Columns (numpy views, one element per instance): time, running, waiting, kv_usage, free_blocks, total,
    kv_upper, pending, queries, hits, healthy, up, version. `healthy`: a candidate for the next decision (a
    gateway also clears it for a backend at its in-flight cap); `up`: the engine is reachable, so an up row that
    was down may have restarted with an empty cache (a snapshot's `healthy` sets both). `changes` logs the rows
    written, in order, so a reader finds what changed since its last look without scanning every row
    (`changed_since`).
    """

    LOG_KEEP = 1 << 16  # the change log is halved when it grows past this
    time: np.ndarray
    running: np.ndarray
    waiting: np.ndarray
    total: np.ndarray
    pending: np.ndarray
    queries: np.ndarray
    hits: np.ndarray
    kv_upper: np.ndarray  # usage no row exceeds before its next write (== kv_usage unless lazy)
    free_lower: np.ndarray  # free blocks no row goes below before its next write (UNKNOWN_FREE: no count)
    _free: np.ndarray
    _kv: np.ndarray

    def __init__(self, n: int = 0) -> None:
        self.n = 0
        self._ints = np.zeros((len(_INTS), 0), np.int64)
        self._flts = np.zeros((len(_FLOATS), 0))
        self.healthy = np.zeros(0, bool)
        self.up = np.zeros(0, bool)
        self.version = np.zeros(0, np.int64)
        self.adapters: list[AdapterState | None] = []  # LoRA adapters per row (None: not reported)
        self.num_unhealthy = 0
        self.kv_stale = False
        self.kv_refresh: Callable[[], None] | None = None
        self._rows: list[tuple[int, float, float, InstanceSnapshot] | None] = []
        self._stamp = 0
        self.changes: list[int] = []  # rows written, in order
        self.changes_base = 0  # absolute position of changes[0]
        self.resize(n)

    # ---- shape -------------------------------------------------------------------------------------------
    def _views(self) -> None:
        for k, name in enumerate(_INTS):
            setattr(self, name, self._ints[k])
        for k, name in enumerate(_FLOATS):
            setattr(self, name, self._flts[k])

    def resize(self, n: int) -> None:
        """Grow to `n` rows; new rows read as an idle, healthy instance at time 0."""
        if n <= self.n:
            return
        extra = n - self.n
        self._ints = np.concatenate([self._ints, np.zeros((len(_INTS), extra), np.int64)], axis=1)
        self._ints[_INTS.index("pending"), self.n :] = NOT_EXPORTED
        self._ints[_INTS.index("free_lower"), self.n :] = UNKNOWN_FREE
        self._flts = np.concatenate([self._flts, np.zeros((len(_FLOATS), extra))], axis=1)
        self.healthy = np.concatenate([self.healthy, np.ones(extra, bool)])
        self.up = np.concatenate([self.up, np.ones(extra, bool)])
        self.version = np.concatenate([self.version, np.zeros(extra, np.int64)])
        self._rows.extend([None] * extra)
        self.adapters.extend([None] * extra)
        self.n = n
        self._views()
        self.changes.extend(range(n - extra, n))

    # ---- writes ------------------------------------------------------------------------------------------
    def _written(self, i: int) -> None:
        self._stamp += 1
        self.version[i] = self._stamp
        ch = self.changes
        ch.append(i)
        if len(ch) > self.LOG_KEEP:
            drop = len(ch) // 2
            del ch[:drop]
            self.changes_base += drop

    def changed_since(self, pos: int) -> tuple[list[int] | None, int]:
        """Rows written since absolute log position `pos` (None: the log no longer reaches back that far, so
        compare `version`s), and the position to pass next time."""
        end = self.changes_base + len(self.changes)
        if pos < self.changes_base:
            return None, end
        return self.changes[pos - self.changes_base :], end

    def set_gauges(
        self, i: int, time: float, running: int, waiting: int, used: int, total: int, pending: int, queries: int,
        hits: int, upper_used: int,
    ) -> None:
        """The simulator's fast write: engine gauges (KV in blocks; `upper_used` bounds it until the next write)."""
        self.running[i] = running
        self.waiting[i] = waiting
        self._free[i] = total - used
        self.total[i] = total
        self.pending[i] = pending
        self.queries[i] = queries
        self.hits[i] = hits
        self.time[i] = time
        self._kv[i] = used / total
        self.kv_upper[i] = upper_used / total
        self.free_lower[i] = total - upper_used
        self._written(i)

    def set_row(
        self,
        i: int,
        time: float,
        running: int,
        waiting: int,
        kv_usage: float,
        free_blocks: int,
        total_blocks: int,
        pending: int = NOT_EXPORTED,
        queries: int = 0,
        hits: int = 0,
        healthy: bool = True,
        kv_upper: float | None = None,
        up: bool | None = None,
    ) -> None:
        if i >= self.n:
            self.resize(i + 1)
        upper = kv_usage if kv_upper is None else kv_upper
        lower = free_blocks if kv_upper is None else int(total_blocks * (1.0 - upper))
        self._ints[:, i] = (running, waiting, free_blocks, total_blocks, pending, queries, hits,
                            lower if total_blocks > 0 else UNKNOWN_FREE)
        self._flts[:, i] = (time, kv_usage, upper)
        if bool(self.healthy[i]) != healthy:
            self.num_unhealthy += -1 if healthy else 1
            self.healthy[i] = healthy
        self.up[i] = healthy if up is None else up
        self._written(i)

    def set_adapters(self, i: int, state: AdapterState | None) -> None:
        """Row `i`'s LoRA adapters (written with its gauges; no version bump of its own)."""
        if self.adapters[i] != state:
            self.adapters[i] = state
            self._rows[i] = None

    def put(self, snap: InstanceSnapshot, up: bool | None = None) -> None:
        """Write row `snap.instance` from a snapshot (a scrape, a health flip); `up` defaults to its `healthy`."""
        p = snap.pending_prefill_tokens
        self.set_row(
            snap.instance, snap.time, snap.num_running, snap.num_waiting, snap.kv_usage, snap.num_free_blocks,
            snap.num_total_blocks, NOT_EXPORTED if p is None else p, snap.prefix_queries, snap.prefix_hits,
            snap.healthy, up=up,
        )
        self.adapters[snap.instance] = snap.adapters
        self._rows[snap.instance] = (self._stamp, -1.0, snap.time, snap)

    def set_healthy(self, i: int, healthy: bool) -> None:
        """Row `i` is (not) a candidate for the next decision; says nothing of whether its engine is up."""
        if bool(self.healthy[i]) != healthy:
            self.num_unhealthy += -1 if healthy else 1
            self.healthy[i] = healthy
            self._written(i)

    def set_up(self, i: int, up: bool) -> None:
        """Row `i`'s engine is (un)reachable: a gateway's breaker opened or closed."""
        if bool(self.up[i]) != up:
            self.up[i] = up
            self._written(i)

    # ---- lazy KV -----------------------------------------------------------------------------------------
    @property
    def kv_usage(self) -> np.ndarray:
        if self.kv_stale and self.kv_refresh is not None:
            self.kv_refresh()
        return self._kv

    @property
    def free_blocks(self) -> np.ndarray:
        if self.kv_stale and self.kv_refresh is not None:
            self.kv_refresh()
        return self._free

    def set_kv(self, rows: np.ndarray | slice, used: np.ndarray) -> None:
        """KV blocks in use of `rows` now (the lazy refresh; no version bump: not a new snapshot)."""
        tot = self.total[rows]
        self._kv[rows] = used / np.maximum(tot, 1)
        self._free[rows] = tot - used
        self.kv_stale = False

    # ---- reads -------------------------------------------------------------------------------------------
    def healthy_rows(self) -> np.ndarray | None:
        """Indices of healthy rows; None when all are healthy or none is (then every row is a candidate)."""
        if self.num_unhealthy == 0 or self.num_unhealthy == self.n:
            return None
        return np.flatnonzero(self.healthy)

    def __len__(self) -> int:
        return self.n

    def _row(self, i: int) -> InstanceSnapshot:
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(i)
        kv = self.kv_usage
        cached = self._rows[i]
        v, k, t = int(self.version[i]), float(kv[i]), float(self.time[i])
        if cached is not None and cached[0] == v and (cached[1] == k or cached[1] < 0) and cached[2] == t:
            return cached[3]
        p = int(self.pending[i])
        snap = InstanceSnapshot(
            instance=i, time=t, num_running=int(self.running[i]), num_waiting=int(self.waiting[i]),
            kv_usage=k, num_free_blocks=int(self._free[i]), num_total_blocks=int(self.total[i]),
            pending_prefill_tokens=None if p < 0 else p, prefix_queries=int(self.queries[i]),
            prefix_hits=int(self.hits[i]), healthy=bool(self.healthy[i]), adapters=self.adapters[i],
        )
        self._rows[i] = (v, k, t, snap)
        return snap

    @overload
    def __getitem__(self, i: int) -> InstanceSnapshot: ...
    @overload
    def __getitem__(self, i: slice) -> list[InstanceSnapshot]: ...
    def __getitem__(self, i: int | slice) -> InstanceSnapshot | list[InstanceSnapshot]:
        if isinstance(i, slice):
            return [self._row(k) for k in range(*i.indices(self.n))]
        return self._row(int(i))

    def __iter__(self) -> Iterator[InstanceSnapshot]:
        return (self._row(k) for k in range(self.n))

    @classmethod
    def from_snapshots(cls, snaps: Sequence[InstanceSnapshot]) -> SnapshotTable:
        t = cls(len(snaps))
        for s in snaps:
            t.put(s)
        return t
