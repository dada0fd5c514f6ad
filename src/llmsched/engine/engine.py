"""A sans-I/O model of one vLLM v1 engine instance.

The engine keeps mechanism (token budget, chunked prefill, paged KV blocks, preemption) and asks a
`RequestPolicy` only *which* waiting request to admit next; the two stay apart so that a new policy never
means a new engine (the opposite of vLLM's monolithic scheduler, see ../shared/STYLE.md).

It never reads a clock. A shell drives it in two verbs per iteration:

    end = engine.start_step(now)      # plan one iteration; None when there is nothing to do
    out = engine.finish_step(end)     # apply it at its end time: tokens, first tokens, finishes

`start_step(now, max_run=k)` may plan a *run* of up to k identical pure-decode iterations at once (the batch
cannot change between two outside events: no request finishes, none can be admitted), priced by the cost
model's `decode_run` in one vectorised call. `interrupt(t)` cuts a run short when an outside event (an
arrival) lands inside it: the iteration in flight at `t` still completes, as on a real GPU. Per-request
timestamps stay exact: the iteration end times of a run are known in closed form.

A request's progress is one number, `num_computed` (tokens whose KV is in cache), against
`tokens_so_far = prompt_len + num_output`; an iteration that brings `num_computed` up to `tokens_so_far`
samples one new token. Prefill, chunked prefill, decode and recompute after preemption are all this rule.

Requests that are decoding (one token an iteration) form the *decode set* and are never visited one by one:
each keeps the offset of its `num_computed` from the engine's iteration counter, and the set keeps the sums
the cost model needs (sequences, KV tokens), a histogram of block phases (so the blocks the set needs after j
more iterations is a 16-term sum), and a heap of finishing iterations. An iteration therefore costs O(prefill
chunks + finishes), not O(batch), which is what makes million-request simulations take seconds. A request's
own counters are brought up to date when it leaves the set (finish, preemption, abort) or on `sync`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmsched.core.hashing import chain
from llmsched.core.types import InstanceSnapshot, Request, Status
from llmsched.engine.config import EngineConfig
from llmsched.engine.kv_cache import KVCache
from llmsched.engine.lora import AdapterSlots
from llmsched.model.base import BatchStats, StepCostModel
from llmsched.policies.request.base import RequestPolicy


@dataclass(slots=True)
class StepOutput:
    """What an iteration (or a run of them) produced, for the shell to deliver."""

    end: float
    steps: int = 1
    tokens: list[Request] = field(default_factory=list)  # got >= 1 token (a run: `steps` tokens each)
    first_tokens: list[Request] = field(default_factory=list)
    finished: list[Request] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)


@dataclass(slots=True)
class EngineStats:
    steps: int = 0
    runs: int = 0  # fast-forwarded decode runs (each counts its iterations in `steps` too)
    busy_time: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    finished: int = 0
    aborted: int = 0


@dataclass(slots=True)
class _Plan:
    start: float
    ends: np.ndarray | None  # iteration end times of a decode run (None: single, or closed form below)
    end: float
    sched: list[tuple[Request, int]]  # prefill chunks: (request, tokens computed in this iteration)
    steps: int
    preempted: list[Request]
    prefill_tokens: int
    affine: tuple[float, float] | None = None  # run durations c0 + c1 * i, when the cost model says so
    prefill_s: float = 0.0  # the prefill part of the iteration's time (fed to `policy.on_prefill`)


def _affine_elapsed(c0: float, c1: float, m: int) -> float:
    """Time of the first m iterations of a run whose i-th iteration takes c0 + c1 * i."""
    return m * c0 + c1 * m * (m - 1) / 2


class Engine:
    """One engine instance. See the module docstring for the protocol."""

    def __init__(
        self,
        cost: StepCostModel,
        policy: RequestPolicy,
        config: EngineConfig | None = None,
        instance: int = 0,
        record_token_times: bool = False,
        num_blocks: int | None = None,
        collect_tokens: bool = True,
    ) -> None:
        self.cfg = cfg = config or EngineConfig()
        self.cost = cost
        self.policy = policy
        self.instance = instance
        self.record_token_times = record_token_times
        # StepOutput.tokens lists every request that got a token (the emulator streams them); the
        # simulator does not need it and skips the O(batch) list.
        self.collect_tokens = collect_tokens
        if num_blocks is None:
            num_blocks = cfg.num_gpu_blocks or cost.kv_capacity_tokens(cfg.gpu_memory_utilization) // cfg.block_size
        self.kv = KVCache(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        # LoRA adapters (engine/lora.py); None: LoRA disabled, a request naming an adapter is refused.
        llm = getattr(getattr(cost, "base", cost), "llm", None)
        self.lora = None if cfg.lora is None else AdapterSlots.for_model(cfg.lora, llm)
        self.bs = cfg.block_size
        self.stats = EngineStats()
        self._plan: _Plan | None = None
        self._pending_prefill = 0  # uncached prompt tokens not yet computed, queued + running
        self._needs_classes = bool(getattr(cost, "needs_class_tokens", False))
        self._affine = getattr(cost, "decode_affine", None)
        # Prefill-time feedback (`policy.on_prefill`) is computed only for a policy that learns from it.
        self._wants_prefill = type(policy).on_prefill is not RequestPolicy.on_prefill
        self._admit_seq = 0
        # Requests with prompt work left (admission order).
        self.prefilling: list[Request] = []
        # The decode set (see the module docstring).
        self.decoding: dict[int, Request] = {}
        self._s = 0  # iterations done by the decode set
        self._dc = 0  # sum over the set of (num_computed - s)
        self._dq = 0  # sum of floor((num_computed - s) / bs)
        self._dh = [0] * self.bs  # histogram of (num_computed - s) mod bs
        self._dheld = 0  # blocks allocated to the set
        self._dfin: list[tuple[int, int, Request]] = []  # (iteration at which it finishes, entry, req)
        self._dcls: dict[str, int] = {}
        self._entries = 0
        self._ahead = 0  # iterations the set's blocks are allocated beyond s (1 while an iteration is planned)
        self._log: list[float] = []  # iteration end times, when recording token times
        self._aborted: list[Request] = []
        # Called with (request) when a request leaves the engine; the simulator collects metrics with it.
        self.on_request_done: Callable[[Request], None] | None = None

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._plan is not None

    @property
    def num_running(self) -> int:
        return len(self.decoding) + len(self.prefilling)

    @property
    def running(self) -> list[Request]:
        """Running requests (decode set first); counters of decoding ones are synced."""
        for r in self.decoding.values():
            self.sync(r)
        return [*self.decoding.values(), *self.prefilling]

    @property
    def has_work(self) -> bool:
        return bool(self.decoding or self.prefilling) or len(self.policy) > 0

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    @property
    def planned_end(self) -> float | None:
        return None if self._plan is None else self._plan.end

    def sync(self, req: Request) -> None:
        """Bring a decoding request's counters up to date (they lag while it is in the decode set)."""
        if req.rid in self.decoding and self.decoding[req.rid] is req:
            nc = req.dec_c + self._s
            req.num_computed = nc
            req.num_output = nc - req.prompt_len + 1

    def _catch_up(self, now: float) -> None:
        """Inside a decode run, allocate the blocks of the iterations begun by `now`, so that KV usage and
        prefix lookups at `now` are what token-by-token stepping would show (the run allocates lazily)."""
        plan = self._plan
        if plan is None or plan.steps == 1 or not self.decoding:
            return
        k = min(self._iterations_begun(plan, now), plan.steps)
        need = self._blocks_at(k) - self._dheld
        if need > 0:
            self.kv.alloc(need)
            self._dheld += need

    def lookup_prefix(self, block_hashes: tuple[int, ...] | None, now: float | None = None) -> int:
        """Prompt tokens of a prefix that this instance holds in its KV cache (at `now`, if given)."""
        if not block_hashes:
            return 0
        if now is not None:
            self._catch_up(now)
        return self.kv.longest_hit(block_hashes, len(block_hashes) * self.bs) * self.bs

    def snapshot(self, now: float) -> InstanceSnapshot:
        running, waiting, used, total, pending, queries, hits = self.gauges(now)
        return InstanceSnapshot(
            instance=self.instance,
            time=now,
            num_running=running,
            num_waiting=waiting,
            kv_usage=used / total,
            num_free_blocks=total - used,
            num_total_blocks=total,
            pending_prefill_tokens=pending,
            prefix_queries=queries,
            prefix_hits=hits,
            adapters=None if self.lora is None else self.lora.state(),
        )

    def gauges(self, now: float | None) -> tuple[int, int, int, int, int, int, int]:
        """`snapshot`'s numbers as a tuple (running, waiting, KV blocks used, total, pending prefill, prefix
        queries, prefix hits): what a shell keeping its own table needs, without building the object.
        `now=None`: the KV blocks as last allocated, not caught up with a decode run in flight (for a shell
        that computes that growth itself, see `lazy_kv`)."""
        if now is not None:
            self._catch_up(now)
        kv = self.kv
        return (len(self.decoding) + len(self.prefilling), len(self.policy), kv.num_used, kv.num_blocks,
                self._pending_prefill, kv.queries, kv.hits)

    def run_end_blocks(self) -> int | None:
        """KV blocks in use at the end of the decode run in flight (usage only grows inside it); None when no
        run is in flight (usage changes only at events), -1 when the run is not in closed form."""
        plan = self._plan
        if plan is None or plan.steps == 1 or not self.decoding:
            return None
        if plan.affine is None:
            return -1
        held = self._dheld
        return self.kv.num_used - held + max(held, self._blocks_at(plan.steps))

    def live_gauges(self, now: float) -> tuple[int, int, int, int, int, int, int, int | None]:
        """`gauges` plus `run_end_blocks` in one call (the simulator's live refresh, once per changed engine per
        arrival): the KV blocks are caught up with a run in flight only where that run is not in closed form
        (end <= 0), as `gauges(None if end and end > 0 else now)` would."""
        end = self.run_end_blocks()
        if end is not None and end <= 0:
            self._catch_up(now)
        return (*self.gauges(None), end)

    def lazy_kv(self) -> tuple[float, float, float, int, int, int, int, int, int, int, list[int]] | None:
        """How KV usage grows inside the decode run in flight, for a shell that computes it without events.

        None when usage only changes at this engine's events. Otherwise (start, c0, c1, steps, s + bs - 1,
        other, held, dq, d, blocks at the run's end, phase histogram): as `_catch_up` would leave it at
        `now`, blocks in use are other + max(held, dq + d q + sum(histogram[bs - m:])) with
        q, m = divmod(s + bs - 1 + k, bs) and k = min(iterations begun by `now`, steps) (`_blocks_at`).
        c0 < 0: the run is not in closed form (use `snapshot`).
        """
        plan = self._plan
        if plan is None or plan.steps == 1 or not self.decoding:
            return None
        c0, c1 = plan.affine if plan.affine is not None else (-1.0, 0.0)
        held = self._dheld
        other = self.kv.num_used - held
        return (plan.start, c0, c1, plan.steps, self._s + self.bs - 1, other, held, self._dq, len(self.decoding),
                other + max(held, self._blocks_at(plan.steps)), self._dh.copy())

    # -- requests in -----------------------------------------------------------------------------------
    def add(self, req: Request, now: float) -> None:
        """Queue a new request (it is considered at the next `start_step`)."""
        if req.prompt_len < 1 or req.output_len < 1:
            raise ValueError(f"request {req.rid}: prompt_len and output_len must be >= 1")
        if self.kv.blocks_for(req.prompt_len + req.output_len) > self.kv.num_blocks:
            raise ValueError(
                f"request {req.rid}: {req.prompt_len}+{req.output_len} tokens exceed this instance's KV capacity"
                f" ({self.kv.num_blocks} blocks of {self.bs})"
            )
        if not self.cfg.enable_chunked_prefill and req.prompt_len + req.output_len > self.cfg.max_num_batched_tokens:
            # vLLM requires max_model_len <= max_num_batched_tokens without chunked prefill: such a request
            # (or its recompute after preemption) could never be scheduled.
            raise ValueError(
                f"request {req.rid}: {req.prompt_len}+{req.output_len} tokens exceed max_num_batched_tokens"
                f" ({self.cfg.max_num_batched_tokens}) and chunked prefill is off"
            )
        if req.adapter is not None:
            if self.lora is None:
                raise ValueError(f"request {req.rid} names LoRA adapter {req.adapter!r} but LoRA is off (engine.lora)")
            self.lora.on_queue(req.adapter)
        req.status = Status.WAITING
        req.instance = self.instance
        req.queued_at = now
        if self.record_token_times and req.token_times is None:
            req.token_times = []
        if req.block_hashes and self.kv.prefix_caching:
            self._catch_up(now)
            # The same cap as admission: whole blocks, at least one prompt token left to compute.
            req.est_cached = self.kv.longest_hit(req.block_hashes, req.prompt_len - 1) * self.bs
        else:
            req.est_cached = 0
        self._pending_prefill += req.prompt_len - req.est_cached
        self.policy.push(req, now)

    def abort(self, req: Request, now: float) -> bool:
        """Drop a request wherever it is (client gone); True if it was here."""
        st = req.status
        if st in (Status.WAITING, Status.PREEMPTED):
            if not self.policy.remove(req):
                return False
            self._pending_prefill -= req.prompt_len - req.est_cached
            if req.adapter is not None and self.lora is not None:
                self.lora.on_unqueue(req.adapter)
        elif st == Status.RUNNING:
            req.status = Status.ABORTED
            if self._plan is not None:
                self._aborted.append(req)  # in flight: leaves at finish_step, its output dropped
                return True
            self._leave(req)
        else:
            return False
        req.status = Status.ABORTED
        req.finish = now
        self.stats.aborted += 1
        return True

    # -- the decode set --------------------------------------------------------------------------------
    def _blocks_at(self, j: int) -> int:
        """Blocks the decode set holds once each member has num_computed + j tokens of KV.

        Sum over members of ceil((c + s + j) / bs) with c = q * bs + r: each contributes q + x // bs, plus 1
        when r >= bs - x % bs (x = s + j + bs - 1), so it is a suffix sum of the phase histogram.
        """
        bs = self.bs
        q, m = divmod(self._s + j + bs - 1, bs)
        total = self._dq + len(self.decoding) * q
        return total + sum(self._dh[bs - m :]) if m else total

    def _enter(self, req: Request) -> None:
        """A request caught up with its prompt (and not finished) joins the decode set."""
        s = self._s
        c = req.num_computed - s
        q, r = divmod(c, self.bs)
        self._dc += c
        self._dq += q
        self._dh[r] += 1
        self._dheld += len(req.kv_hashed) + req.kv_anon  # type: ignore[arg-type]
        req.dec_c = c
        self._entries += 1
        req.dec_entry = self._entries
        req.dec_log = len(self._log)
        self.decoding[req.rid] = req
        heapq.heappush(self._dfin, (s + req.output_len - req.num_output, self._entries, req))
        if self._needs_classes:
            k = req.cls or ""
            self._dcls[k] = self._dcls.get(k, 0) + 1

    def _exit(self, req: Request) -> None:
        """Leave the decode set: sync counters, hand its blocks back to per-request accounting."""
        del self.decoding[req.rid]
        s = self._s
        c = req.dec_c
        q, r = divmod(c, self.bs)
        self._dc -= c
        self._dq -= q
        self._dh[r] -= 1
        nc = c + s
        req.num_computed = nc
        req.num_output = nc - req.prompt_len + 1
        blocks = self.kv.blocks_for(nc + self._ahead)
        self._dheld -= blocks
        req.kv_anon = blocks - len(req.kv_hashed)  # type: ignore[arg-type]
        if self.record_token_times and req.token_times is not None:
            req.token_times.extend(self._log[req.dec_log :])
        if self._needs_classes:
            k = req.cls or ""
            self._dcls[k] -= 1

    def _hashes_through(self, req: Request, full: int, synthetic: bool) -> tuple[int, ...]:
        """req's block hashes extended to its first `full` blocks where the answer's are known
        (`output_hashes`) or, if `synthetic`, with request-private hashes for the rest."""
        known = req.block_hashes or ()
        base = req.prompt_len // self.bs
        if req.output_hashes and base <= len(known) < full:
            known = (*known, *req.output_hashes[len(known) - base : full - base])
        if synthetic and full > len(known):
            parent = known[-1] if known else hash(("llmsched-request", req.rid))
            known = (*known, *chain(((req.rid, j) for j in range(len(known), full)), parent))
        return known

    def _cache_generated(self, req: Request) -> None:
        """Give a preemption victim's full blocks past its prompt hashes (generated tokens) hashes, the answer's
        own where the workload knows them, so they stay cached when it is freed and its recompute can hit
        them, as vLLM caches full blocks."""
        if req.rid in self.decoding and self.decoding[req.rid] is req:
            self.sync(req)
        full = req.num_computed // self.bs
        if full > len(req.block_hashes or ()):
            req.block_hashes = self._hashes_through(req, full, synthetic=True)

    def _leave(self, req: Request) -> None:
        """Remove a running request (abort/preempt) from whichever set holds it and free its blocks."""
        if req.rid in self.decoding and self.decoding[req.rid] is req:
            self._exit(req)
        else:
            self.prefilling.remove(req)
            if req.num_computed < req.prompt_len:
                self._pending_prefill -= req.prompt_len - req.num_computed
        if req.block_hashes:
            self.kv.promote(req, req.num_computed)
        self.kv.free(req, req.num_computed)
        if req.adapter is not None and self.lora is not None:
            self.lora.on_leave(req.adapter)

    def _last_admitted(self) -> Request:
        """The preemption victim: the last admitted (vLLM FCFS), or for a priority queue the request of
        lowest priority, latest arrival (vLLM's priority scheduling; ties: the earliest admitted)."""
        if self.policy.preempt_by_priority:
            # vLLM: max over running of (priority, arrival); a tie goes to the earliest in running order.
            return max(
                (*self.decoding.values(), *self.prefilling), key=lambda r: (r.priority, r.arrival, -r.admit_seq)
            )
        best: Request | None = None
        for r in self.decoding.values():
            if best is None or r.admit_seq > best.admit_seq:
                best = r
        for r in self.prefilling:
            if best is None or r.admit_seq > best.admit_seq:
                best = r
        assert best is not None
        return best

    def _preempt(self, req: Request, now: float) -> None:
        if self.kv.prefix_caching:
            self._cache_generated(req)
        self._leave(req)
        self._pending_prefill += req.prompt_len
        req.num_computed = 0
        req.status = Status.PREEMPTED
        req.num_preemptions += 1
        req.est_cached = 0
        self.stats.preemptions += 1
        if req.adapter is not None and self.lora is not None:
            self.lora.on_queue(req.adapter)
        self.policy.requeue(req, now)

    # -- scheduling ------------------------------------------------------------------------------------
    def start_step(self, now: float, max_run: int = 1) -> float | None:
        """Plan the next iteration (or a decode run of up to `max_run` iterations); return its end time."""
        if self._plan is not None:
            raise RuntimeError("start_step called while an iteration is in flight")
        policy = self.policy
        decoding = self.decoding
        if not self.prefilling and not len(policy):
            if not decoding:
                return None
            if not self._needs_classes:  # the common case between events: pure decode, nothing to admit
                need = self._blocks_at(1) - self._dheld
                if need <= self.kv.num_free:
                    self.kv.alloc(need)
                    self._dheld += need
                    self._ahead = 1
                    d = len(decoding)
                    b = BatchStats(decode_tokens=d, kv_tokens=self._dc + d * (self._s + 1))
                    steps = self._run_length(max_run) if max_run > 1 else 1
                    return self._launch(b, now, steps, [], [])
        cfg = self.cfg
        kv = self.kv
        budget = cfg.max_num_batched_tokens
        # vLLM caps a request's chunk at long_prefill_token_threshold only when another request is running or
        # waiting (a lone request starves nobody).
        threshold = budget
        if cfg.long_prefill_token_threshold and len(decoding) + len(self.prefilling) + len(policy) > 1:
            threshold = cfg.long_prefill_token_threshold
        by_priority = policy.preempt_by_priority
        preempted: list[Request] = []
        # 1. The decode set: one more token of KV each, preempting the last admitted while blocks lack.
        if self.decoding:
            need = self._blocks_at(1) - self._dheld
            while need > kv.num_free and self.decoding:
                victim = self._last_admitted()
                self._preempt(victim, now)
                preempted.append(victim)
                need = self._blocks_at(1) - self._dheld
            if self.decoding:
                kv.alloc(need)
                self._dheld += need
                self._ahead = 1
                budget -= len(self.decoding)
        # 2. Running requests with prompt work left, in admission order.
        sched: list[tuple[Request, int]] = []
        prefilling = self.prefilling
        i = 0
        while i < len(prefilling) and budget > 0:
            req = prefilling[i]
            n = min(req.prompt_len + req.num_output - req.num_computed, budget, threshold)
            ok = True
            while not kv.extend(req, req.num_computed + n):
                victim = self._last_admitted()
                if victim.rid in self.decoding and self.decoding[victim.rid] is victim:
                    budget += 1  # it was scheduled to decode in this iteration
                elif victim is not req and prefilling.index(victim) < i:
                    # (priority) a request scheduled earlier in this iteration: its chunk is given back
                    j = next(k for k, (r, _) in enumerate(sched) if r is victim)
                    budget += sched.pop(j)[1]
                    i -= 1
                self._preempt(victim, now)
                preempted.append(victim)
                if victim is req:
                    ok = False
                    break
            if not ok:
                if by_priority:
                    continue  # vLLM: the requests after the lowest-priority one may still fit
                break
            sched.append((req, n))
            budget -= n
            i += 1
        # 3. Admission from the waiting queue, unless this iteration had to preempt.
        blocked_by_kv = False
        lora = self.lora
        skipped: list[Request] = []  # (LoRA) waiting requests passed over in this iteration, in queue order
        lora_blocked = False  # every waiting request was passed over for want of a LoRA slot
        if not preempted:
            max_seqs = cfg.max_num_seqs
            while budget > 0 and len(self.decoding) + len(prefilling) < max_seqs:
                req = policy.peek(now)
                if req is None:
                    lora_blocked = bool(skipped)
                    break
                if req.adapter is not None and lora is not None and not lora.admissible(req.adapter):
                    # vLLM skips a request whose adapter would exceed max_loras; it keeps its place
                    policy.pop(now)
                    skipped.append(req)
                    lora.stats.skipped += 1
                    continue
                need_tok = req.prompt_len + req.num_output
                n = min(need_tok, budget, threshold)
                if not cfg.enable_chunked_prefill:
                    # Without chunking a prompt must fit the budget whole (after its cache hit); vLLM stops
                    # admitting at such a request, as we do.
                    hit_est = kv.longest_hit(req.block_hashes, need_tok - 1) * self.bs
                    if min(need_tok - hit_est, threshold) > budget:
                        break
                    n = need_tok
                hit = kv.admit(req, n, cfg.scheduler_reserve_full_isl)
                if hit is None:
                    blocked_by_kv = True
                    break
                got = policy.pop(now)
                assert got is req, "policy.pop returned a different request than peek"
                # The estimate becomes the actual hit (which, after a preemption, may cover generated tokens).
                self._pending_prefill += req.est_cached - min(hit, req.prompt_len)
                req.num_cached = hit
                req.num_computed = hit
                n = min(need_tok - hit, budget, threshold)
                if req.first_scheduled < 0:
                    req.first_scheduled = now
                req.status = Status.RUNNING
                self._admit_seq += 1
                req.admit_seq = self._admit_seq
                if req.adapter is not None and lora is not None:
                    lora.on_admit(req.adapter)
                prefilling.append(req)
                sched.append((req, n))
                budget -= n
            for req in skipped:
                policy.requeue(req, now)
        d = len(self.decoding)
        if not sched and not d:
            self._ahead = 0
            if preempted:
                # vLLM ends a step that only preempted with nothing scheduled; the next step admits with the
                # freed blocks. It runs no model: an iteration of zero duration.
                self._plan = _Plan(now, None, now, [], 1, preempted, 0)
                return now
            return None
        b = BatchStats()
        for req, n in sched:
            self._account(b, req, n)
        b.decode_tokens = d
        b.kv_tokens = self._dc + d * (self._s + 1)
        if self._needs_classes:
            ct = b.class_tokens if b.class_tokens is not None else {}
            for k, v in self._dcls.items():
                if v:
                    ct[k] = ct.get(k, 0) + v
            b.class_tokens = ct
        # 4. One iteration, or a run of identical decode iterations when nothing can change the batch.
        steps = 1
        if (
            max_run > 1
            and not sched
            and not preempted
            and (not len(policy) or d >= cfg.max_num_seqs or lora_blocked or (blocked_by_kv and policy.time_invariant))
        ):
            steps = self._run_length(max_run)
        return self._launch(b, now, steps, sched, preempted)

    def _launch(
        self, b: BatchStats, now: float, steps: int, sched: list[tuple[Request, int]], preempted: list[Request]
    ) -> float:
        """Price the planned iteration(s) and put them in flight; returns the end time."""
        ends = None
        affine = None
        if steps > 1:
            affine = self._affine(b) if self._affine is not None else None
            if affine is not None:
                end = now + _affine_elapsed(affine[0], affine[1], steps)
            else:
                ends = now + np.cumsum(self.cost.decode_run(b, steps, now))
                end = float(ends[-1])
        else:
            end = now + self.cost.step_time(b, now)
            if self.lora is not None:
                end += self.lora.take_pending()  # adapters loaded for this iteration's admissions
        self._plan = _Plan(now, ends, end, sched, steps, preempted, b.prefill_tokens, affine)
        if sched and self._wants_prefill:
            self._plan.prefill_s = self._prefill_part(b, end - now, now)
        return end

    def _prefill_part(self, b: BatchStats, elapsed: float, now: float) -> float:
        """The prefill part of an iteration that took `elapsed`: minus the decode part as the cost model prices
        it (the iteration's price less the price of its prefill chunks alone). A stateful cost model (MoE: its
        expert loads are sampled) prices through its pure dense model `base`, so that pricing draws nothing."""
        if not b.decode_tokens:
            return elapsed
        pricer = getattr(self.cost, "base", self.cost)
        alone = BatchStats(b.prefill_tokens, b.prefill_pairs, b.prefill_seqs)
        decode = pricer.step_time(b, now) - pricer.step_time(alone, now)
        return max(elapsed - decode, 0.0)

    def _account(self, b: BatchStats, req: Request, n: int) -> None:
        c = req.num_computed
        b.prefill_tokens += n
        b.prefill_seqs += 1
        b.prefill_pairs += n * (c + (n + 1) / 2)
        if self._needs_classes:
            ct = b.class_tokens if b.class_tokens is not None else {}
            key = req.cls or ""
            ct[key] = ct.get(key, 0) + n
            b.class_tokens = ct

    def _run_length(self, max_run: int) -> int:
        """Iterations the all-decode batch can run unchanged: until a finish, or until the KV runs out."""
        fin = self._dfin
        while fin and not self._valid(fin[0]):
            heapq.heappop(fin)
        k = min(max_run, fin[0][0] - self._s) if fin else max_run
        if k <= 1:
            return 1
        room = self.kv.num_free + self._dheld  # blocks the set may hold in total
        if self._blocks_at(k) <= room:
            return k
        lo, hi = 1, k  # the first iteration's blocks are allocated already
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._blocks_at(mid) <= room:
                lo = mid
            else:
                hi = mid
        return lo

    def _valid(self, entry: tuple[int, int, Request]) -> bool:
        req = entry[2]
        return req.dec_entry == entry[1] and self.decoding.get(req.rid) is req

    def interrupt(self, t: float) -> float:
        """An outside event at `t` inside a decode run: keep only the iterations started before `t`."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("interrupt with nothing in flight")
        if plan.steps == 1 or t >= plan.end:
            return plan.end
        keep = self._iterations_begun(plan, t)
        if keep < plan.steps:
            plan.steps = keep
            if plan.affine is not None:
                plan.end = plan.start + _affine_elapsed(plan.affine[0], plan.affine[1], keep)
            else:
                assert plan.ends is not None
                plan.ends = plan.ends[:keep]
                plan.end = float(plan.ends[-1])
        return plan.end

    @staticmethod
    def _iterations_begun(plan: _Plan, t: float) -> int:
        """Iterations of a run that ended by `t`, plus the one in flight at `t`."""
        if plan.affine is not None:
            c0, c1 = plan.affine
            start = plan.start
            dt = t - start
            if c1 > 0:
                m = int((-(c0 - c1 / 2) + math.sqrt((c0 - c1 / 2) ** 2 + 2 * c1 * dt)) / c1)
            else:
                m = int(dt / c0) if c0 > 0 else plan.steps
            m = max(0, min(m, plan.steps))
            while m > 0 and start + _affine_elapsed(c0, c1, m) > t:
                m -= 1
            while m < plan.steps and start + _affine_elapsed(c0, c1, m + 1) <= t:
                m += 1
            return m + 1
        assert plan.ends is not None
        return int(np.searchsorted(plan.ends, t, side="right")) + 1

    def finish_step(self, now: float) -> StepOutput:
        """Apply the iteration (or run) in flight, which ends at `now`."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("finish_step with nothing in flight")
        self._plan = None
        steps = plan.steps
        out = StepOutput(end=plan.end, steps=steps, preempted=plan.preempted)
        st = self.stats
        st.steps += steps
        st.busy_time += plan.end - plan.start
        kv = self.kv
        record = self.record_token_times
        finished = out.finished
        # The decode set advances `steps` iterations; a run's further blocks are allocated now.
        d = len(self.decoding)
        if d:
            if steps > 1:
                st.runs += 1
                extra = self._blocks_at(steps) - self._dheld
                kv.alloc(extra)
                self._dheld += extra
            self._s += steps
            st.decode_tokens += d * steps
            if record:
                if plan.ends is not None:
                    self._log.extend(plan.ends.tolist())
                elif plan.affine is not None:
                    c0, c1 = plan.affine
                    self._log.extend(plan.start + _affine_elapsed(c0, c1, m) for m in range(1, steps + 1))
                else:
                    self._log.append(now)
            if self.collect_tokens:
                out.tokens.extend(self.decoding.values())
        elif record and plan.sched:
            self._log.append(now)
        self._ahead = 0
        for req in self._aborted:
            self._leave(req)
            req.finish = now
            self.stats.aborted += 1
        self._aborted.clear()
        fin = self._dfin
        s = self._s
        while fin and fin[0][0] <= s:
            entry = heapq.heappop(fin)
            req = entry[2]
            if self._valid(entry):
                self._exit(req)
                finished.append(req)
        # Prefill chunks.
        if plan.prefill_tokens:
            st.prefill_tokens += plan.prefill_tokens
            if self._wants_prefill:
                self.policy.on_prefill(plan.prefill_tokens, plan.prefill_s, now)
        prefilling = self.prefilling
        done_prefill = False
        for req, n in plan.sched:
            if req.status != Status.RUNNING:
                continue
            if req.num_computed < req.prompt_len:
                self._pending_prefill -= min(n, req.prompt_len - req.num_computed)
            req.num_computed += n
            if req.num_computed == req.prompt_len + req.num_output:
                req.num_output += 1
                if req.num_output == 1:
                    req.first_token = now
                    out.first_tokens.append(req)
                if record and req.token_times is not None:
                    req.token_times.append(now)
                out.tokens.append(req)
                done_prefill = True
                if req.num_output >= req.output_len:
                    req.status = Status.FINISHED
                    finished.append(req)
                else:
                    self._enter(req)
        if done_prefill:
            decoding = self.decoding
            self.prefilling = [r for r in prefilling if r.status == Status.RUNNING and r.rid not in decoding]
        if len(finished) > 1:
            # vLLM frees finished requests in the order it scheduled them (running order = admission order);
            # the free queue's order, hence which cached blocks are evicted first, depends on it.
            finished.sort(key=lambda r: r.admit_seq)
        for req in finished:
            if req.adapter is not None and self.lora is not None:
                self.lora.on_leave(req.adapter)
            if req.kv_hashed is not None:
                if req.output_hashes and kv.prefix_caching:
                    # vLLM keeps a finished request's full blocks cached, the answer's too: a follow-up
                    # turn that sends prompt + answer hits them.
                    kv.promote(req, req.num_computed, self._hashes_through(req, req.num_computed // self.bs, False))
                kv.free(req, req.num_computed)
            req.status = Status.FINISHED
            req.finish = now
            st.finished += 1
            self.policy.on_finish(req, now)
            if self.on_request_done is not None:
                self.on_request_done(req)
        return out
