"""EWSJF (arXiv 2601.21758): effective-workload SJF over learned length queues, with the max-wait guard.

The policy composes the four components, each a module of its own:
1. `ewsjf_partition.refine_and_prune` over a sliding window of recent request sizes, re-run every
   `repartition_every` arrivals (the "strategic loop"; counted in arrivals so that it needs no clock), with the
   cheap variance split every `split_check_every` arrivals in between;
2. `ewsjf_routing.QueueSet`: queue choice at arrival, bubble queues in the gaps, bubble pruning;
3. `ewsjf_scoring`: the density-weighted score of each queue head (FCFS inside a queue, so the head is the
   queue's longest waiter), with C_prefill fitted online from `on_prefill`;
4. `ewsjf_tuner.TwinTuner`: Bayesian trials of {a_u, b_u, a_f, b_f, alpha}, each judged by replaying a window
   of real arrivals (closed once `on_finish` reported all their first tokens) through a twin of this policy;
   live traffic only runs the incumbent, which changes only for a challenger confirmed on fresh windows.

Batch fill: the engine pops repeatedly at one `now` to fill one iteration. The first pop of a new `now` scores
the queue heads and picks the best queue; later pops at the same `now` keep taking that queue's requests, and
when it runs dry back-fill from the nearest non-empty queue (the shorter one on a tie), so one iteration
gathers requests of similar length. A pop costs O(log n) plus one multiply-add per non-empty queue: only heads
are scored, never the whole queue.

Requests are sized by their uncached prompt tokens (`req.uncached_prompt`), which is the prompt length unless
the engine estimated a prefix hit. The optional `max_wait_s` guard serves overdue requests oldest first on a
share `guard_share` of admissions (bound as in `keyed`). It works unchanged as a gateway admission queue: without `on_prefill` the cost model
keeps its prior, without `on_finish` the tuner simply never moves.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from typing import Any, Literal

import numpy as np
from pydantic import Field

from llmsched.core.types import Request
from llmsched.policies.request.base import REQUEST_POLICIES, RequestPolicy
from llmsched.policies.request.ewsjf_partition import refine_and_prune
from llmsched.policies.request.ewsjf_routing import LengthQueue, QueueSet
from llmsched.policies.request.ewsjf_scoring import PrefillFit, ScoreWeights, score_line
from llmsched.policies.request.ewsjf_tuner import RANGES, TwinTuner, Window
from llmsched.policies.request.keyed import GuardParams

Entry = tuple[float, int, int, Request]  # (arrival, rid, seq, request)


class EWSJFParams(GuardParams):
    # 1. partition
    alpha: float = Field(1.5, gt=0, description="refine: split at a gap beyond alpha x the chance-level gap")
    max_queues: int = Field(8, ge=1, description="prune to at most this many queues")
    seed_clusters: int = Field(3, ge=1, description="k of the k-means seed partition")
    min_width: float = Field(64.0, ge=0, description="refine stops below this queue width in tokens")
    window: int = Field(10_000, ge=10, description="recent request sizes the partition is fitted on")
    min_samples: int = Field(100, ge=2, description="arrivals before the first partition")
    repartition_every: int = Field(2000, ge=1, description="arrivals between two Refine-and-Prune runs")
    split_check_every: int = Field(250, ge=1, description="arrivals between two variance-split checks")
    split_var_ratio: float = Field(
        3.0, gt=1, description="split a queue whose variance exceeds this x the mean"
    )
    # 2. routing
    up_tol: float = Field(1.10, ge=1)
    low_tol: float = Field(0.90, gt=0, le=1)
    max_bubbles: int = Field(8, ge=0)
    bubble_ttl: int = Field(
        50, ge=1, description="scheduling rounds a bubble may stay empty before it is pruned"
    )
    # 3. scoring
    a_u: float = 0.002
    b_u: float = 1.0
    a_f: float = 0.0
    b_f: float = 0.5
    w_base: float = Field(1.0, ge=0)
    prefill_coeff: float = Field(1e-4, gt=0, description="prior C_prefill(b) = coeff * b^exp, seconds")
    prefill_exp: float = Field(1.0, gt=0)
    fit_decay: float = Field(0.995, gt=0, le=1, description="forgetting factor of the prefill-cost fit")
    refit_every: int = Field(16, ge=1, description="prefill observations between two refits")
    backfill: bool = Field(
        True, description="at one `now`, keep the chosen queue and back-fill from neighbours"
    )
    use_uncached: bool = Field(True, description="size requests by uncached prompt tokens when estimated")
    # 4. meta-optimisation
    meta_optimize: bool = True
    meta_window: int = Field(200, ge=20, description="arrivals per tuning window (replayed by the twin)")
    meta_trials: int = Field(60, ge=0, description="twin trials in all; then the tuner stops proposing")
    meta_per_window: int = Field(4, ge=1, description="twin trials judged on each window")
    meta_tail_limit: float = Field(
        1.5, gt=0, description="constraint: long-tail p99 E2E <= this x FCFS's on the same arrivals (twin)"
    )
    meta_batch_tokens: int = Field(
        8192, ge=1, description="the twin's token budget per iteration (the engine's max_num_batched_tokens)"
    )
    meta_margin: float = Field(
        0.05, ge=0, lt=1, description="a challenger must be better by this fraction, on two windows"
    )
    meta_screen: bool = Field(True, description="first trials: each parameter at either end of its range")
    meta_confirm: int = Field(2, ge=1, description="fresh windows a challenger must win before it is adopted")
    meta_objective: Literal["short", "mean"] = Field(
        "short", description="minimise the mean TTFT of the short half (by size) or of every request"
    )
    meta_guard: bool = Field(
        True, description="also tune the starvation guard (max_wait_s from FCFS's wait in the twin, guard_share); "
        "ignored when max_wait_s is set"
    )
    seed: int = 0


@REQUEST_POLICIES.register("ewsjf")
class EWSJF(RequestPolicy):
    time_invariant = False
    Params = EWSJFParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p: EWSJFParams = self.params  # type: ignore[assignment]
        self.queues_ = QueueSet(p.up_tol, p.low_tol, p.max_bubbles, p.bubble_ttl)
        self.fit_ = PrefillFit(p.prefill_coeff, p.prefill_exp, p.fit_decay)
        self.weights_ = ScoreWeights(p.a_u, p.b_u, p.a_f, p.b_f, p.w_base)
        self.alpha_ = p.alpha
        self._live: dict[int, tuple[int, LengthQueue]] = {}
        self._old: list[Entry] = []  # arrival heap for the guard
        self._seq = itertools.count()
        self._win = np.zeros(p.window)
        self._seen = 0
        self._recent: list[int] = []  # sizes since the last partition
        self._partitioned = False
        self._force_partition = False
        self._round = 0
        self._round_now: float | None = None
        self._chosen: LengthQueue | None = None
        self._sver = 0  # bumped when the fit, the weights or the queues change (invalidates cached scores)
        self._wver = -1  # queue-set version the per-queue weights were computed for
        self._prefills = 0
        self._credit = 0.0  # the guard's admission credit (see keyed)
        self._overdue = False
        self._guard_turn = False
        self.partitions_ = 0
        self.splits_ = 0
        self.tuner_: TwinTuner | None = None
        # Tuning windows: records [arrival, size, ttft, KV held, decode s, rid] in arrival order (ttft NaN until the
        # request finished, None once removed); `_block` gathers the finished head until it holds a window.
        self._recs: deque[list[Any]] = deque()
        self._rec_of: dict[int, list[Any]] = {}
        self._block: list[list[Any]] = []
        self._prev: list[list[Any]] = []  # the last closed window (the twin's context for the next one)
        self._hist: list[list[Any]] = []  # older closed records still in the live engine at `_prev`'s start
        self._parts: dict[float, Any] = {}  # twin partitions of the live size window, by alpha
        if p.meta_optimize:
            start = {"a_u": p.a_u, "b_u": p.b_u, "a_f": p.a_f, "b_f": p.b_f, "alpha": p.alpha}
            self.tuner_ = TwinTuner(
                start,
                self._twin,
                self._cost,
                budget=p.meta_batch_tokens,
                seed=p.seed,
                per_window=p.meta_per_window,
                max_trials=p.meta_trials,
                tail_limit=p.meta_tail_limit,
                margin=p.meta_margin,
                objective=p.meta_objective,
                confirm=p.meta_confirm,
                screen=p.meta_screen,
                guard=p.meta_guard and p.max_wait_s is None,
            )
            self._apply(self.tuner_.incumbent)

    # -- parameters ------------------------------------------------------------------------------------
    def _guard_of(self, theta: dict[str, float], live: bool = True) -> dict[str, Any]:
        """The guard parameters a tuned theta stands for: the live ones for the incumbent (fixed in seconds when
        it was adopted), else max_wait_s = the latest window's FCFS wait / guard_rate; {} when not tuned."""
        if "guard_rate" not in theta:
            return {}
        tuner = self.tuner_
        if live and tuner is not None and theta == tuner.incumbent:
            p = self.params
            return {"max_wait_s": p.max_wait_s, "guard_share": p.guard_share}  # type: ignore[attr-defined]
        rate, wait = theta["guard_rate"], tuner.wait_ref if tuner is not None else 0.0
        return {"max_wait_s": wait / rate if rate > 0 and wait > 0 else None, "guard_share": theta["guard_share"]}

    def _set_guard(self, theta: dict[str, float]) -> None:
        """Live guard of a newly adopted theta, in seconds from the FCFS wait of the window that adopted it."""
        g = self._guard_of(theta, live=False)
        if not g:
            return
        was = self.params.max_wait_s  # type: ignore[attr-defined]
        self.params = self.params.model_copy(update=g)
        if was is None and g["max_wait_s"] is not None:  # requests queued before the guard was on join its heap
            self._old = [e for q in self.queues_.queues for e in q.heap
                         if self._live.get(e[1], (None, None))[0] == e[2]]
            heapq.heapify(self._old)

    def _apply(self, theta: dict[str, float]) -> None:
        self._set_guard(theta)
        w = self.weights_
        self.weights_ = ScoreWeights(
            theta["a_u"], theta["b_u"], theta["a_f"], theta["b_f"], w.w_base, w.min_urgency
        )
        if theta["alpha"] != self.alpha_:
            self.alpha_ = theta["alpha"]
            self._force_partition = self._partitioned  # the next arrival re-partitions with the new alpha
        self._sver += 1
        self._wver = -1

    def set_params(self, **params: Any) -> None:
        """Live change (a sweep, or a user's tuner): the scoring weights and alpha follow the parameters."""
        super().set_params(**params)
        p: EWSJFParams = self.params  # type: ignore[assignment]
        self.weights_ = ScoreWeights(p.a_u, p.b_u, p.a_f, p.b_f, p.w_base, self.weights_.min_urgency)
        self._apply({"a_u": p.a_u, "b_u": p.b_u, "a_f": p.a_f, "b_f": p.b_f, "alpha": p.alpha})

    def _reweight(self) -> None:
        w = self.weights_
        for q in self.queues_.queues:
            q.wu = w.urgency(q.mean)
            q.wf = w.fairness(q.mean)
        self._wver = self.queues_.version
        self._sver += 1  # queue indices or weights moved: cached head scores are stale

    def size(self, req: Request) -> int:
        return req.uncached_prompt if self.params.use_uncached else req.prompt_len  # type: ignore[attr-defined]

    # -- verbs -----------------------------------------------------------------------------------------
    def push(self, req: Request, now: float) -> None:
        p: EWSJFParams = self.params  # type: ignore[assignment]
        s = self.size(req)
        req.policy_data = s
        self._win[self._seen % p.window] = s
        self._seen += 1
        self._recent.append(s)
        if self.tuner_ is not None and not self.tuner_.done:
            rec = [req.arrival, s, float("nan"), 0.0, 0.0, req.rid]
            self._recs.append(rec)
            self._rec_of[req.rid] = rec
        if self._force_partition or (
            len(self._recent) >= (p.repartition_every if self._partitioned else p.min_samples)
        ):
            self.repartition()
        elif self._partitioned and len(self._recent) % p.split_check_every == 0:
            self.variance_split()
        self._insert(req, s)

    def requeue(self, req: Request, now: float) -> None:
        s = req.policy_data
        self._insert(req, s if isinstance(s, int) else self.size(req))

    def _insert(self, req: Request, size: int) -> None:
        q = self.queues_.route(size, self._round)
        seq = next(self._seq)
        self._live[req.rid] = (seq, q)
        e = (req.arrival, req.rid, seq, req)
        heapq.heappush(q.heap, e)
        q.count += 1
        q.last_busy = self._round
        if self.params.max_wait_s is not None:  # type: ignore[attr-defined]
            heapq.heappush(self._old, e)

    def _head(self, heap: list[Entry]) -> Entry | None:
        live = self._live
        while heap:
            e = heap[0]
            t = live.get(e[1])
            if t is not None and t[0] == e[2]:
                return e
            heapq.heappop(heap)
        return None

    def _best(self, now: float) -> LengthQueue | None:
        """The queue whose head scores highest at `now` (a scheduling round)."""
        qs = self.queues_
        if self._wver != qs.version:
            self._reweight()
        n = len(qs.queues)
        ver = self._sver
        live = self._live
        best, best_score = None, -1.0
        for i, q in enumerate(qs.queues):
            if not q.count:
                continue
            e = q.heap[0]
            t = live.get(e[1])
            if t is None or t[0] != e[2]:
                e = self._head(q.heap)  # type: ignore[assignment]
            c = q.cache
            if c is None or c[0] != e[2] or c[1] != ver:
                size = e[3].policy_data
                a, b = score_line(i, n, size, self.fit_.cost(size), self.weights_.w_base, q.wu, q.wf)  # type: ignore[arg-type]
                c = q.cache = (e[2], ver, a, b)
            score = c[2] + c[3] * (now - e[0])
            if score > best_score:
                best, best_score = q, score
        return best

    def _neighbour(self, q: LengthQueue | None, now: float) -> LengthQueue | None:
        """Nearest non-empty queue to `q` by index, the shorter one first on a tie."""
        qs = self.queues_.queues
        try:
            i = qs.index(q) if q is not None else -1
        except ValueError:
            i = -1
        if i < 0:
            return self._best(now)
        for d in range(1, len(qs)):
            for j in (i - d, i + d):
                if 0 <= j < len(qs) and qs[j].count:
                    return qs[j]
        return None

    def _select(self, now: float) -> Entry | None:
        self._guard_turn = False
        if not self._live:
            return None
        p = self.params
        if p.max_wait_s is not None:  # type: ignore[attr-defined]
            e = self._head(self._old)
            self._overdue = e is not None and now - e[0] >= p.max_wait_s  # type: ignore[attr-defined]
            if self._overdue and self._credit + p.guard_share >= 1.0 - 1e-9:  # type: ignore[attr-defined]
                self._guard_turn = True
                return e
        if now != self._round_now:
            self._round += 1
            self._round_now = now
            if self.queues_.num_bubbles and self._round % 8 == 0:
                self.queues_.prune_bubbles(self._round)
            self._chosen = self._best(now)
        elif self._chosen is None or not self._chosen.count:
            self._chosen = self._neighbour(self._chosen, now) if p.backfill else self._best(now)  # type: ignore[attr-defined]
        q = self._chosen
        return None if q is None else self._head(q.heap)

    def peek(self, now: float) -> Request | None:
        e = self._select(now)
        return None if e is None else e[3]

    def pop(self, now: float) -> Request | None:
        e = self._select(now)
        if e is None:
            return None
        if self._guard_turn:
            self._credit += self.params.guard_share - 1.0  # type: ignore[attr-defined]
        elif self._overdue:
            self._credit += self.params.guard_share  # type: ignore[attr-defined]
        self._drop(e[1])
        if self._old and len(self._old) > 4 * len(self._live) + 128:
            self._rebuild_old()
        return e[3]

    def _drop(self, rid: int) -> bool:
        t = self._live.pop(rid, None)
        if t is None:
            return False
        q = t[1]
        q.count -= 1
        if not q.count:
            q.heap.clear()
            q.last_busy = self._round
        return True

    def remove(self, req: Request) -> bool:
        rec = self._rec_of.pop(req.rid, None)
        if rec is not None:
            rec[2] = None  # cancelled: never gets a first token, left out of its window
        return self._drop(req.rid)

    def _rebuild_old(self) -> None:
        self._old = [e for e in self._old if self._live.get(e[1], (None,))[0] == e[2]]
        heapq.heapify(self._old)

    def __len__(self) -> int:
        return len(self._live)

    # -- feedback --------------------------------------------------------------------------------------
    def on_prefill(self, tokens: int, seconds: float, now: float) -> None:
        self.fit_.observe(tokens, seconds)
        self._prefills += 1
        if self._prefills % self.params.refit_every == 0 and self.fit_.refit():  # type: ignore[attr-defined]
            self._sver += 1

    def on_finish(self, req: Request, now: float) -> None:
        rec = self._rec_of.pop(req.rid, None)
        if rec is None or self.tuner_ is None:
            return
        first = req.first_token if req.first_token >= 0 else now
        rec[2:5] = first - req.arrival, req.prompt_len + max(req.num_output, 1), max(now - first, 0.0)
        recs, block = self._recs, self._block
        p: EWSJFParams = self.params  # type: ignore[assignment]
        # The head moves on past removed or finished records (ttft not NaN); past an unfinished one only when
        # 8 windows wait behind it (a request that failed or was aborted while running never finishes).
        while recs and (recs[0][2] is None or recs[0][2] == recs[0][2] or len(recs) > 8 * p.meta_window):
            r = recs.popleft()
            if r[2] is None or r[2] != r[2]:
                self._rec_of.pop(r[5], None)
                continue
            block.append(r)
            if len(block) >= p.meta_window:
                # The previous window is replayed first as context: the backlog it left is what the new
                # window's requests queued behind.
                # Before it, the requests of older windows still in the live engine when the context began
                # (queued or running): the twin starts from that state, not from an empty engine.
                start = (self._prev or block)[0][0]
                older = [x for x in self._hist if x[0] + x[2] + x[4] > start]
                a = np.array(older + self._prev + block, dtype=np.float64)
                warm = len(older) + len(self._prev)
                self._hist = [x for x in older + self._prev if x[0] + x[2] + x[4] > block[0][0]]
                self._prev = block
                self._block = block = []  # one list: records after this close in the same call join it
                self._parts.clear()
                theta = self.tuner_.close(Window(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], warm,
                                                 start if older else -math.inf))
                if theta is not None:
                    self._apply(theta)
                if self.tuner_.done:
                    recs.clear()
                    self._rec_of.clear()
                    return

    # -- the tuner's twin ------------------------------------------------------------------------------
    def _cost(self, tokens: float) -> float:
        return self.fit_.cost(int(tokens))

    def _twin(self, theta: dict[str, float]) -> EWSJF:
        """A fresh EWSJF with `theta`, this policy's other settings and cost fit, and the partition that
        Refine-and-Prune gives on the live size window with theta's alpha; it never re-partitions itself."""
        p: EWSJFParams = self.params  # type: ignore[assignment]
        never = 10**9
        scoring = {k: v for k, v in theta.items() if k in RANGES}
        twin = EWSJF(**{
            **p.model_dump(), **scoring, **self._guard_of(theta), "meta_optimize": False, "window": 10,
            "min_samples": never,
            "repartition_every": never, "split_check_every": never,
            "prefill_coeff": self.fit_.coeff, "prefill_exp": self.fit_.exp,
        })
        alpha = theta["alpha"]
        part = self._parts.get(alpha)
        if part is None and self._seen:
            win = self._win[: min(self._seen, p.window)]
            part = self._parts[alpha] = refine_and_prune(win, alpha, p.max_queues, p.seed_clusters, p.min_width)
        if part is not None:
            twin.queues_.set_partition(part, 0)
            twin._partitioned = True
        return twin

    # -- structure -------------------------------------------------------------------------------------
    def _entries(self, queues: list[LengthQueue]) -> list[Entry]:
        live = self._live
        out = []
        for q in queues:
            for e in q.heap:
                t = live.get(e[1])
                if t is not None and t[0] == e[2] and t[1] is q:
                    out.append(e)
            q.heap = []
            q.count = 0
        return out

    def _reroute(self, entries: list[Entry]) -> None:
        """Route queued requests into the current queues; vectorised for the common case (inside a range)."""
        qs = self.queues_
        queues = list(qs.queues)
        targets: list[LengthQueue | None] = [None] * len(entries)
        if queues and entries:
            sizes = np.fromiter((e[3].policy_data for e in entries), dtype=np.float64, count=len(entries))
            los = np.array([q.lo for q in queues], dtype=np.float64)
            his = np.array([q.hi for q in queues], dtype=np.float64)
            i = np.searchsorted(los, sizes, side="right") - 1
            ic = np.clip(i, 0, len(queues) - 1)
            jc = np.clip(i + 1, 0, len(queues) - 1)
            here = (i >= 0) & (sizes <= qs.up_tol * his[ic])
            above = ~here & (i + 1 < len(queues)) & (sizes >= qs.low_tol * los[jc])
            pick = np.where(here, ic, np.where(above, jc, -1)).tolist()
            targets = [queues[k] if k >= 0 else None for k in pick]
        live = self._live
        touched: dict[int, LengthQueue] = {}
        for e, q in zip(entries, targets, strict=True):
            if q is None:  # a gap: the full rule (may create a bubble)
                q = qs.route(e[3].policy_data, self._round)  # type: ignore[arg-type]
            live[e[1]] = (e[2], q)
            q.heap.append(e)
            q.count += 1
            touched[id(q)] = q
        for q in touched.values():
            heapq.heapify(q.heap)  # untouched queues may hold stale entries; their counts stay as they are
        self._chosen = None

    def repartition(self) -> None:
        """Run Refine-and-Prune over the window and move every queued request to its new queue."""
        p: EWSJFParams = self.params  # type: ignore[assignment]
        window = self._win[: min(self._seen, p.window)]
        self._force_partition = False
        self._recent = []
        if window.size == 0:
            return
        part = refine_and_prune(window, self.alpha_, p.max_queues, p.seed_clusters, p.min_width)
        old = self.queues_.set_partition(part, self._round)
        self._reroute(self._entries(old))
        self._partitioned = True
        self.partitions_ += 1

    def variance_split(self) -> None:
        """Split queues whose recent size variance is far above the others' (between two partitions)."""
        p: EWSJFParams = self.params  # type: ignore[assignment]
        qs = self.queues_
        cands = qs.overdispersed(np.asarray(self._recent, dtype=np.float64), p.split_var_ratio, 20)
        for q, at in cands:
            if sum(not x.bubble for x in qs.queues) >= p.max_queues:
                break
            entries = self._entries([q])
            qs.split(q, at)
            self._reroute(entries)
            self.splits_ += 1
