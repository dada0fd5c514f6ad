"""Shared machinery of the load- and prefix-aware routers: stale-snapshot correction and the prefix index.

Snapshots are stale by up to the metrics interval. Between two refreshes the router knows exactly what it
itself changed: requests it dispatched, finished, or saw prefill. So each load signal is estimated as
`snapshot value + (router's count now - router's count when that snapshot was taken)`; with a single router
the estimate is exact for queue length whatever the interval, and stays a good estimate for the running
batch. The queued uncached prefill is the snapshot's only where the source exports it (the simulator's live
snapshots); vLLM's /metrics does not, so there it is the router's own outstanding account, charged at
dispatch and released at the first token, which no scrape resets. Routers that mirror a peer which does not
correct (llm-d, least-kv) read raw snapshots.

The prefix index (`prefix_index.PrefixIndex`) is updated at dispatch, aged out after `index_ttl_s`, and
optionally corrected by the engine's reported hits (`hit_feedback`: shrink an instance's remembered capacity
when its engine hit fewer blocks than the index predicted, regrow it slowly when predictions hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from llmsched.core.registry import Params
from llmsched.core.snapshots import SnapshotTable
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import Router
from llmsched.policies.instance.prefix_index import PrefixIndex


class TrackedParams(Params):
    block_size: int = Field(16, ge=1, description="engine KV block size in tokens (block_hashes granularity)")
    index_capacity_blocks: int | None = Field(
        None, ge=1, description="prefix index capacity per instance; default the snapshot's num_total_blocks"
    )
    index_ttl_s: float | None = Field(None, gt=0, description="forget blocks not dispatched for this long")
    hit_feedback: bool = Field(False, description="adapt index capacity to the engine's reported hits")
    index_stride: int = Field(
        4, ge=1, description="index every k-th block hash: matches are exact to k blocks, index work / k"
    )


class TrackedRouter(Router):
    """A router with delta-corrected load signals and (if `uses_index`) a prefix index.

    State is per instance in numpy arrays, kept up to date incrementally: each dispatch, first token and
    finish changes one element, and a route only looks at the snapshot rows whose version changed since the
    last one (`sync`). `q_est_` / `run_est_` / `w_est_` are the corrected queue, running batch and queued
    uncached prefill (unclipped; read them through `queue`, `running`, `pending`).
    """

    Params: ClassVar[type[Params]] = TrackedParams
    uses_index: ClassVar[bool] = False

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.in_flight_ = np.zeros(0, np.int64)  # type: ignore[assignment]
        self.pending_prefill_ = np.zeros(0, np.int64)  # type: ignore[assignment]
        self.base_in_flight_ = np.zeros(0, np.int64)
        self.base_pending_ = np.zeros(0, np.int64)
        self.q_est_ = np.zeros(0, np.int64)
        self.run_est_ = np.zeros(0, np.int64)
        self.w_est_ = np.zeros(0, np.int64)
        self.seen_ = np.zeros(0, np.int64)  # table version of each row when last synced (-1: never)
        self.was_up_ = np.zeros(0, bool)
        self.table_: SnapshotTable | None = None  # the table the state was synced with
        self._own: SnapshotTable | None = None  # built from snapshot lists (tests, shells without a table)
        self._own_src: list[InstanceSnapshot | None] = []
        self.index_: PrefixIndex | None = None
        self._lookup: tuple[int, int, np.ndarray] = (-1, -1, np.zeros(0, np.int64))
        self._predicted: dict[int, tuple[int, int]] = {}  # rid -> (instance, predicted cached blocks)
        self._last_age = float("-inf")
        self._cap_unknown = False
        self._log_pos = -1  # position in the table's change log

    def resize(self, n: int) -> None:
        extra = n - self.num_instances_
        if extra <= 0:
            return
        z = np.zeros(extra, np.int64)
        self.in_flight_ = np.concatenate([self.in_flight_, z])
        self.pending_prefill_ = np.concatenate([self.pending_prefill_, z])
        self.base_in_flight_ = np.concatenate([self.base_in_flight_, z])
        self.base_pending_ = np.concatenate([self.base_pending_, z])
        self.q_est_ = np.concatenate([self.q_est_, z])
        self.run_est_ = np.concatenate([self.run_est_, z])
        self.w_est_ = np.concatenate([self.w_est_, z])
        self.seen_ = np.concatenate([self.seen_, z - 1])
        self.was_up_ = np.concatenate([self.was_up_, np.ones(extra, bool)])
        self.num_instances_ = n
        if self.index_ is not None:
            self.index_.resize(n)

    # ---- snapshots ---------------------------------------------------------------------------------------
    def table_of(self, snapshots: Sequence[InstanceSnapshot]) -> SnapshotTable:
        """The snapshots as a table: the shell's own, or one kept here from a list (rows rewritten when their
        snapshot is new: another object with a different time or content)."""
        if isinstance(snapshots, SnapshotTable):
            return snapshots
        own = self._own
        if own is None:
            own = self._own = SnapshotTable(len(snapshots))
        src = self._own_src
        if len(src) < len(snapshots):
            src.extend([None] * (len(snapshots) - len(src)))
        for s in snapshots:
            old = src[s.instance]
            if s is not old and (old is None or s.time != old.time or s != old):
                src[s.instance] = s
                own.put(s)
        return own

    def sync(self, snapshots: Sequence[InstanceSnapshot], now: float) -> SnapshotTable:
        """Take in the snapshot rows that are new (idempotent: routing twice with the same snapshots changes
        nothing); returns the table. The router's counts at that moment become the base that later
        dispatches are measured from; queued prefill is the snapshot's where exported, else the router's
        own outstanding account (charged at dispatch, released at the first token), which no scrape resets.
        """
        tab = self.table_of(snapshots)
        n = len(tab)
        if n > self.num_instances_:
            self.resize(n)
        if tab is not self.table_:
            self.table_ = tab
            self.seen_[:] = -1
            self._log_pos = -1
        rows, self._log_pos = tab.changed_since(self._log_pos)
        if rows is not None and len(rows) <= 12:  # the usual case between two live arrivals
            changed = bool(rows)
            for i in rows:
                self._rebase_one(tab, i)
        else:
            chg = (tab.version != self.seen_[:n]).nonzero()[0]
            changed = bool(len(chg))
            if changed:
                self._rebase(tab, chg)
        if self.uses_index:
            p = self.params
            if self.index_ is None or (self._cap_unknown and changed):
                # Capacity: the engines' KV blocks; before any snapshot says how many (a gateway routing
                # before its first scrape), unbounded until one does.
                cap = p.index_capacity_blocks or int(tab.total.max(initial=0))
                known = cap > 0
                cap = max(1, cap // p.index_stride) if known else 1 << 40
                if self.index_ is None:
                    self.index_ = PrefixIndex(self.num_instances_, cap, track_age=p.index_ttl_s is not None)
                elif known:
                    for i in range(self.index_.num_instances):
                        self.index_.max_capacity_[i] = cap
                        self.index_.set_capacity(i, cap)
                self._cap_unknown = not known
            ttl = self.params.index_ttl_s
            if ttl is not None and now - self._last_age >= ttl / 8:
                self._last_age = now
                self.index_.age_out(now, ttl)
        return tab

    def _rebase(self, tab: SnapshotTable, chg: np.ndarray) -> None:
        self.seen_[chg] = tab.version[chg]
        own = self.pending_prefill_[chg]
        self.base_in_flight_[chg] = self.in_flight_[chg]
        self.base_pending_[chg] = own
        run = tab.running[chg]
        self.run_est_[chg] = run
        self.q_est_[chg] = run + tab.waiting[chg]
        pend = tab.pending[chg]
        self.w_est_[chg] = np.where(pend >= 0, pend, own)
        up = tab.up[chg]  # not `healthy`: a gateway clears that for a backend at its in-flight cap
        back = chg[up & ~self.was_up_[chg]]
        self.was_up_[chg] = up
        if len(back) and self.index_ is not None:
            for i in back.tolist():  # back from down: assume a restarted engine, cache empty
                self.index_.clear_instance(i)
                self.decisions["index-reset"] += 1

    def _rebase_one(self, tab: SnapshotTable, i: int) -> None:
        """`_rebase` of one row, with Python scalars (`item`): numpy scalar arithmetic costs more than the rest."""
        self.seen_[i] = tab.version[i]
        own = self.pending_prefill_.item(i)
        self.base_in_flight_[i] = self.in_flight_[i]
        self.base_pending_[i] = own
        run = tab.running.item(i)
        self.run_est_[i] = run
        self.q_est_[i] = run + tab.waiting.item(i)
        pend = tab.pending.item(i)
        self.w_est_[i] = pend if pend >= 0 else own
        up = tab.up.item(i)
        if up != self.was_up_.item(i):
            if up and self.index_ is not None:
                self.index_.clear_instance(i)
                self.decisions["index-reset"] += 1
            self.was_up_[i] = up

    def on_snapshots(self, snapshots: Sequence[InstanceSnapshot], now: float) -> None:
        self.sync(snapshots, now)

    @staticmethod
    def healthy(snapshots: Sequence[InstanceSnapshot]) -> list[int]:
        if isinstance(snapshots, SnapshotTable):
            rows = snapshots.healthy_rows()
            return list(range(len(snapshots))) if rows is None else rows.tolist()
        return Router.healthy(snapshots)

    def queue(self) -> np.ndarray:
        """Running + waiting per instance: snapshot corrected by own dispatches and finishes since."""
        return np.maximum(self.q_est_, 0)

    def running(self) -> np.ndarray:
        return np.maximum(self.run_est_, 0)

    def pending(self) -> np.ndarray:
        """Uncached prefill queued per instance (snapshot + own since, or own account where not exported)."""
        return np.maximum(self.w_est_, 0)

    def queue_est(self, s: InstanceSnapshot) -> int:
        return max(0, int(self.q_est_[s.instance]))

    def running_est(self, s: InstanceSnapshot) -> int:
        return max(0, int(self.run_est_[s.instance]))

    def pending_est(self, s: InstanceSnapshot) -> int:
        return max(0, int(self.w_est_[s.instance]))

    # ---- own accounting ----------------------------------------------------------------------------------
    def _charge(self, req: Request, instance: int, tokens: int) -> None:
        self._charged[req.rid] = tokens
        self.in_flight_[instance] += 1
        self.pending_prefill_[instance] += tokens
        self.q_est_[instance] += 1
        self.run_est_[instance] += 1
        self.w_est_[instance] += tokens

    def on_first_token(self, req: Request, instance: int, now: float) -> None:
        tokens = self._charged.pop(req.rid, 0)
        if tokens:
            old = int(self.pending_prefill_[instance])
            new = max(0, old - tokens)
            self.pending_prefill_[instance] = new
            self.w_est_[instance] -= old - new
        self._feedback(req, instance)

    def on_finish(self, req: Request, instance: int, now: float) -> None:
        if self.in_flight_[instance] > 0:
            self.in_flight_[instance] -= 1
            self.q_est_[instance] -= 1
            self.run_est_[instance] -= 1
        if req.rid in self._charged:  # ended before this dispatch's first token: its prefill is still charged
            # (not `req.first_token < 0`: a gateway retry after a first token elsewhere is charged again)
            self.on_first_token(req, instance, now)
        self._predicted.pop(req.rid, None)

    # ---- prefix ------------------------------------------------------------------------------------------
    def matched_blocks(self, req: Request) -> np.ndarray:
        """Leading blocks of `req` each instance holds, per the index (cached for the current request)."""
        idx = self.index_
        n = self.num_instances_
        if idx is None or not req.block_hashes:
            return np.zeros(n, np.int64)
        rid, ver, m = self._lookup
        if rid == req.rid and ver == idx.version_ and len(m) == n:
            return m
        m = idx.match_array(self.index_keys(req), n)
        k = self.params.index_stride
        if k > 1:
            m *= k
        self._lookup = (req.rid, idx.version_, m)
        return m

    def index_keys(self, req: Request) -> tuple[int, ...]:
        """The hashes the index stores for `req`: every `index_stride`-th (still chained, so still a prefix)."""
        hashes = req.block_hashes or ()
        k = self.params.index_stride
        return hashes[k - 1 :: k] if k > 1 else tuple(hashes)

    def new_tokens(self, req: Request, matched: int) -> int:
        """Prompt tokens still to compute given `matched` cached blocks (vLLM recomputes at least one)."""
        return max(1, req.prompt_len - int(matched) * self.params.block_size)

    def new_tokens_all(self, req: Request) -> np.ndarray:
        """`new_tokens` for every instance at once."""
        if self.index_ is None or not req.block_hashes:
            return np.full(self.num_instances_, max(1, req.prompt_len), np.int64)
        return np.maximum(req.prompt_len - self.matched_blocks(req) * self.params.block_size, 1)

    def prefill_estimate(self, req: Request, instance: int) -> int:
        if self.index_ is None or not req.block_hashes:
            return req.prompt_len
        return self.new_tokens(req, self.matched_blocks(req)[instance])

    def on_dispatch(self, req: Request, instance: int, now: float) -> None:
        if instance >= self.num_instances_:
            self.resize(instance + 1)
        idx = self.index_
        if idx is not None and req.block_hashes:
            m = int(self.matched_blocks(req)[instance])
            self._charge(req, instance, self.new_tokens(req, m))  # before the index changes
            if self.params.hit_feedback:
                self._predicted[req.rid] = (instance, m)
            idx.touch(instance, self.index_keys(req), now)
        else:
            self._charge(req, instance, req.prompt_len)

    def _feedback(self, req: Request, instance: int) -> None:
        pred = self._predicted.pop(req.rid, None)
        idx = self.index_
        if pred is None or idx is None or pred[0] != instance:
            return
        pred = (pred[0], pred[1] // self.params.index_stride)
        actual = req.num_cached // (self.params.block_size * self.params.index_stride)
        cap, top = idx.capacity_[instance], idx.max_capacity_[instance]
        if actual < pred[1]:
            self.decisions["index-overestimate"] += 1
            idx.set_capacity(instance, max(top // 16, int(cap * 0.9)))
        elif pred[1] and cap < top:
            idx.capacity_[instance] = min(top, cap + max(1, top // 256))


def lexmin(c: np.ndarray | None, *keys: np.ndarray) -> np.ndarray:
    """Candidates (`c`; None: all) minimising `keys` lexicographically, in index order.

    (`v[v.argmin()]` and `.nonzero()[0]` rather than `v.min()` and `np.flatnonzero`: the same values without
    numpy's Python-level wrappers, which cost more than the operation itself on a few hundred instances.)"""
    first = keys[0] if c is None else keys[0][c]
    ties = (first == first[first.argmin()]).nonzero()[0]
    if c is not None:
        ties = c[ties]
    for k in keys[1:]:
        if len(ties) == 1:
            break
        v = k[ties]
        ties = ties[v == v[v.argmin()]]
    return ties


def argmin_tiebreak(scores: Sequence[float], cands: Sequence[int], tiebreak: Sequence[float]) -> int:
    """Candidate with the lowest score; ties go to the lowest `tiebreak`, then the lowest index."""
    best = cands[0]
    bs, bt = scores[best], tiebreak[best]
    for i in cands[1:]:
        s = scores[i]
        if s < bs or (s == bs and tiebreak[i] < bt):
            best, bs, bt = i, s, tiebreak[i]
    return best
