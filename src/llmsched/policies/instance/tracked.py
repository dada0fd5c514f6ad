"""Shared machinery of the load- and prefix-aware routers: stale-snapshot correction and the prefix index.

Snapshots are stale by up to the metrics interval. Between two refreshes the router knows exactly what it
itself changed: requests it dispatched, finished, or saw prefill. So each load signal is estimated as
`snapshot value + (router's count now - router's count when that snapshot was taken)`; with a single router
the estimate is exact for queue length whatever the interval, and stays a good estimate for running and
pending prefill. Routers that mirror a peer which does not do this (llm-d, least-kv) read raw snapshots.

The prefix index (`prefix_index.PrefixIndex`) is updated at dispatch, aged out after `index_ttl_s`, and
optionally corrected by the engine's reported hits (`hit_feedback`: shrink an instance's remembered capacity
when its engine hit fewer blocks than the index predicted, regrow it slowly when predictions hold).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from llmsched.core.registry import Params
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
    """A router with delta-corrected load signals and (if `uses_index`) a prefix index."""

    Params: ClassVar[type[Params]] = TrackedParams
    uses_index: ClassVar[bool] = False

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.snap_: list[InstanceSnapshot | None] = []  # the snapshot each base_* count belongs to
        self.base_in_flight_: list[int] = []
        self.base_pending_: list[int] = []
        self.index_: PrefixIndex | None = None
        self._lookup: tuple[int, int, list[int]] = (-1, -1, [])  # (rid, index version, matched blocks)
        self._predicted: dict[int, tuple[int, int]] = {}  # rid -> (instance, predicted cached blocks)
        self._last_age = float("-inf")

    def resize(self, n: int) -> None:
        super().resize(n)
        while len(self.snap_) < n:
            self.snap_.append(None)
            self.base_in_flight_.append(0)
            self.base_pending_.append(0)
        if self.index_ is not None:
            self.index_.resize(n)

    # ---- snapshots ---------------------------------------------------------------------------------------
    def sync(self, snapshots: Sequence[InstanceSnapshot], now: float) -> None:
        """Note which snapshots are new (idempotent: routing twice with the same snapshots changes nothing).

        The router's counts at that moment become the base that later dispatches are measured from.
        """
        if len(snapshots) > self.num_instances_:
            self.resize(len(snapshots))
        seen = self.snap_
        for s in snapshots:
            i = s.instance
            old = seen[i]
            # A new scrape: a different time, or (live snapshots at one instant) different content.
            if s is not old and (old is None or s.time != old.time or s != old):
                seen[i] = s
                self.base_in_flight_[i] = self.in_flight_[i]
                self.base_pending_[i] = self.pending_prefill_[i]
                if old is not None and s.healthy and not old.healthy and self.index_ is not None:
                    self.index_.clear_instance(i)  # back from down: assume a restarted engine, cache empty
                    self.decisions["index-reset"] += 1
        if self.uses_index:
            if self.index_ is None:
                p = self.params
                cap = p.index_capacity_blocks or max((s.num_total_blocks for s in snapshots), default=1)
                self.index_ = PrefixIndex(self.num_instances_, max(1, cap // p.index_stride),
                                          track_age=p.index_ttl_s is not None)
            ttl = self.params.index_ttl_s
            if ttl is not None and now - self._last_age >= ttl / 8:
                self._last_age = now
                self.index_.age_out(now, ttl)

    def on_snapshots(self, snapshots: Sequence[InstanceSnapshot], now: float) -> None:
        self.sync(snapshots, now)

    def delta(self, i: int) -> int:
        """Requests dispatched minus finished at `i` since its snapshot was taken."""
        return self.in_flight_[i] - self.base_in_flight_[i]

    def queue_est(self, s: InstanceSnapshot) -> int:
        return max(0, s.num_running + s.num_waiting + self.in_flight_[s.instance] - self.base_in_flight_[s.instance])

    def running_est(self, s: InstanceSnapshot) -> int:
        return max(0, s.num_running + self.in_flight_[s.instance] - self.base_in_flight_[s.instance])

    def pending_est(self, s: InstanceSnapshot) -> int:
        i = s.instance
        return max(0, s.pending_prefill_tokens + self.pending_prefill_[i] - self.base_pending_[i])

    # ---- prefix ------------------------------------------------------------------------------------------
    def matched_blocks(self, req: Request) -> list[int]:
        """Leading blocks of `req` each instance holds, per the index (cached for the current request)."""
        idx = self.index_
        if idx is None or not req.block_hashes:
            return [0] * self.num_instances_
        rid, ver, m = self._lookup
        if rid == req.rid and ver == idx.version_ and len(m) == self.num_instances_:
            return m
        k = self.params.index_stride
        m = idx.match(self.index_keys(req))
        if k > 1:
            m = [x * k for x in m]
        if len(m) < self.num_instances_:
            m += [0] * (self.num_instances_ - len(m))
        self._lookup = (req.rid, idx.version_, m)
        return m

    def index_keys(self, req: Request) -> tuple[int, ...]:
        """The hashes the index stores for `req`: every `index_stride`-th (still chained, so still a prefix)."""
        hashes = req.block_hashes or ()
        k = self.params.index_stride
        return hashes[k - 1 :: k] if k > 1 else tuple(hashes)

    def new_tokens(self, req: Request, matched: int) -> int:
        """Prompt tokens still to compute given `matched` cached blocks (vLLM recomputes at least one)."""
        return max(1, req.prompt_len - matched * self.params.block_size)

    def prefill_estimate(self, req: Request, instance: int) -> int:
        if self.index_ is None or not req.block_hashes:
            return req.prompt_len
        return self.new_tokens(req, self.matched_blocks(req)[instance])

    def on_dispatch(self, req: Request, instance: int, now: float) -> None:
        if instance >= self.num_instances_:
            self.resize(instance + 1)
        idx = self.index_
        if idx is not None and req.block_hashes:
            m = self.matched_blocks(req)[instance]
            super().on_dispatch(req, instance, now)  # charges prefill_estimate before the index changes
            if self.params.hit_feedback:
                self._predicted[req.rid] = (instance, m)
            idx.touch(instance, self.index_keys(req), now)
        else:
            super().on_dispatch(req, instance, now)

    def on_first_token(self, req: Request, instance: int, now: float) -> None:
        super().on_first_token(req, instance, now)
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

    def on_finish(self, req: Request, instance: int, now: float) -> None:
        super().on_finish(req, instance, now)
        self._predicted.pop(req.rid, None)


def argmin_tiebreak(scores: Sequence[float], cands: Sequence[int], tiebreak: Sequence[float]) -> int:
    """Candidate with the lowest score; ties go to the lowest `tiebreak`, then the lowest index."""
    best = cands[0]
    bs, bt = scores[best], tiebreak[best]
    for i in cands[1:]:
        s = scores[i]
        if s < bs or (s == bs and tiebreak[i] < bt):
            best, bs, bt = i, s, tiebreak[i]
    return best
