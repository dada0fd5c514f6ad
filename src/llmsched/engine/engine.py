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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmsched.core.types import InstanceSnapshot, Request, Status
from llmsched.engine.config import EngineConfig
from llmsched.engine.kv_cache import KVCache
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
    ends: np.ndarray | None  # iteration end times of a decode run; None for a single iteration
    end: float
    sched: list[tuple[Request, int]]  # (request, tokens computed in this iteration)
    steps: int
    preempted: list[Request]
    prefill_tokens: int


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
    ) -> None:
        self.cfg = cfg = config or EngineConfig()
        self.cost = cost
        self.policy = policy
        self.instance = instance
        self.record_token_times = record_token_times
        if num_blocks is None:
            num_blocks = cfg.num_gpu_blocks or cost.kv_capacity_tokens(cfg.gpu_memory_utilization) // cfg.block_size
        self.kv = KVCache(num_blocks, cfg.block_size, cfg.enable_prefix_caching)
        self.running: list[Request] = []  # admission order; preemption takes from the end
        self.stats = EngineStats()
        self._plan: _Plan | None = None
        self._pending_prefill = 0  # uncached prompt tokens not yet computed, queued + running
        self._needs_classes = bool(getattr(cost, "needs_class_tokens", False))
        # Called with (request) when a request leaves the engine; the simulator collects metrics with it.
        self.on_request_done: Callable[[Request], None] | None = None

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._plan is not None

    @property
    def has_work(self) -> bool:
        return bool(self.running) or len(self.policy) > 0

    @property
    def num_waiting(self) -> int:
        return len(self.policy)

    def lookup_prefix(self, block_hashes: tuple[int, ...] | None) -> int:
        """Prompt tokens of a prefix that this instance holds in its KV cache right now."""
        if not block_hashes:
            return 0
        return self.kv.longest_hit(block_hashes, len(block_hashes) * self.kv.block_size) * self.kv.block_size

    def snapshot(self, now: float) -> InstanceSnapshot:
        kv = self.kv
        return InstanceSnapshot(
            instance=self.instance,
            time=now,
            num_running=len(self.running),
            num_waiting=len(self.policy),
            kv_usage=kv.usage,
            num_free_blocks=kv.num_free,
            num_total_blocks=kv.num_blocks,
            pending_prefill_tokens=self._pending_prefill,
            prefix_queries=kv.queries,
            prefix_hits=kv.hits,
        )

    # -- requests in -----------------------------------------------------------------------------------
    def add(self, req: Request, now: float) -> None:
        """Queue a new request (it is considered at the next `start_step`)."""
        if req.prompt_len < 1 or req.output_len < 1:
            raise ValueError(f"request {req.rid}: prompt_len and output_len must be >= 1")
        if self.kv.blocks_for(req.prompt_len + req.output_len) > self.kv.num_blocks:
            raise ValueError(
                f"request {req.rid}: {req.prompt_len}+{req.output_len} tokens exceed this instance's KV capacity"
                f" ({self.kv.num_blocks} blocks of {self.kv.block_size})"
            )
        req.status = Status.WAITING
        req.instance = self.instance
        req.queued_at = now
        if self.record_token_times and req.token_times is None:
            req.token_times = []
        req.est_cached = self.lookup_prefix(req.block_hashes) if self.kv.prefix_caching else 0
        req.est_cached = min(req.est_cached, req.prompt_len - 1)
        self._pending_prefill += req.prompt_len - req.est_cached
        self.policy.push(req, now)

    def abort(self, req: Request, now: float) -> bool:
        """Drop a request wherever it is (client gone). Its blocks are freed at once; True if it was here."""
        if req.status in (Status.WAITING, Status.PREEMPTED):
            if not self.policy.remove(req):
                return False
            self._pending_prefill -= self._remaining_prefill(req)
        elif req.status == Status.RUNNING:
            if self._plan is not None and any(r is req for r, _ in self._plan.sched):
                # In flight: mark it; finish_step drops its output and frees it.
                req.status = Status.ABORTED
                return True
            self.running.remove(req)
            self._pending_prefill -= self._remaining_prefill(req)
            self.kv.free(req)
        else:
            return False
        req.status = Status.ABORTED
        req.finish = now
        self.stats.aborted += 1
        return True

    def _remaining_prefill(self, req: Request) -> int:
        """This request's share of `_pending_prefill`."""
        if req.status == Status.RUNNING:
            return max(0, req.prompt_len - req.num_computed)
        return req.prompt_len - req.est_cached

    # -- scheduling ------------------------------------------------------------------------------------
    def start_step(self, now: float, max_run: int = 1) -> float | None:
        """Plan the next iteration (or a decode run of up to `max_run` iterations); return its end time."""
        if self._plan is not None:
            raise RuntimeError("start_step called while an iteration is in flight")
        if not self.running and not len(self.policy):
            return None
        cfg = self.cfg
        kv = self.kv
        budget = cfg.max_num_batched_tokens
        threshold = cfg.long_prefill_token_threshold or budget
        sched: list[tuple[Request, int]] = []
        preempted: list[Request] = []
        b = BatchStats()
        if self._needs_classes:
            b.class_tokens = {}
        running = self.running
        # 1. Running requests first, in admission order, as vLLM v1 does.
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if req.status == Status.ABORTED:  # pragma: no cover - aborted requests leave at finish_step
                i += 1
                continue
            need = req.prompt_len + req.num_output - req.num_computed
            n = need if need == 1 else min(need, budget, threshold)
            while not kv.extend(req, req.num_computed + n):
                victim = running.pop()  # last admitted first, like vLLM's FCFS preemption
                self._preempt(victim, now)
                preempted.append(victim)
                if victim is req:
                    break
            else:
                self._account(b, req, n)
                sched.append((req, n))
                budget -= n
                i += 1
                continue
            break  # req itself was preempted: nothing after it is left to schedule
        # 2. Admission from the waiting queue, unless this iteration already had to preempt.
        blocked_by_kv = False
        policy = self.policy
        if not preempted:
            max_seqs = cfg.max_num_seqs
            while budget > 0 and len(running) < max_seqs:
                req = policy.peek(now)
                if req is None:
                    break
                need = req.prompt_len + req.num_output
                n = min(need, budget, threshold)
                if not cfg.enable_chunked_prefill:
                    # Without chunking a prompt must fit the budget whole (after its cache hit); vLLM skips
                    # such a request, we stop at it so the policy's order is kept.
                    hit_est = kv.longest_hit(req.block_hashes, need - 1) * kv.block_size
                    if need - hit_est > budget:
                        break
                    n = need
                hit = kv.admit(req, n)
                if hit is None:
                    blocked_by_kv = True
                    break
                got = policy.pop(now)
                assert got is req, "policy.pop returned a different request than peek"
                self._pending_prefill += req.est_cached - hit  # the estimate becomes the actual hit
                req.num_cached = hit
                req.num_computed = hit
                n = min(need - hit, budget, threshold)
                if req.first_scheduled < 0:
                    req.first_scheduled = now
                req.status = Status.RUNNING
                running.append(req)
                self._account(b, req, n)
                sched.append((req, n))
                budget -= n
        if not sched:
            if preempted:  # everything preempted itself; try again with the freed blocks
                return self.start_step(now, max_run)
            return None
        # 3. Price it: one iteration, or a run of identical decode iterations.
        steps = 1
        ends = None
        if (
            max_run > 1
            and b.prefill_seqs == 0
            and not preempted
            and (not len(policy) or len(running) >= cfg.max_num_seqs or (blocked_by_kv and policy.time_invariant))
            and len(sched) == len(running)
        ):
            steps = self._run_length(max_run)
        if steps > 1:
            durs = self.cost.decode_run(b, steps, now)
            ends = now + np.cumsum(durs)
            end = float(ends[-1])
        else:
            end = now + self.cost.step_time(b, now)
        self._plan = _Plan(now, ends, end, sched, steps, preempted, b.prefill_tokens)
        return end

    def _account(self, b: BatchStats, req: Request, n: int) -> None:
        c = req.num_computed
        if n == 1 and c == req.prompt_len + req.num_output - 1 and req.num_output > 0:
            b.decode_tokens += 1
            b.kv_tokens += c + 1
        else:
            b.prefill_tokens += n
            b.prefill_seqs += 1
            b.prefill_pairs += n * (c + (n + 1) / 2)
        if b.class_tokens is not None:
            key = req.cls or ""
            b.class_tokens[key] = b.class_tokens.get(key, 0) + n

    def _run_length(self, max_run: int) -> int:
        """Iterations the current all-decode batch can run unchanged: until a finish or the KV runs out."""
        running = self.running
        k = max_run
        for r in running:
            left = r.output_len - r.num_output
            if left < k:
                k = left
        if k <= 1:
            return 1
        bs = self.kv.block_size
        free = self.kv.num_free
        nc = np.fromiter((r.num_computed for r in running), dtype=np.int64, count=len(running))
        held = np.fromiter((len(r.kv_hashed) + r.kv_anon for r in running), dtype=np.int64, count=len(running))  # type: ignore[arg-type]

        def need(j: int) -> int:
            return int(np.maximum(-(-(nc + j) // bs) - held, 0).sum())

        if need(k) <= free:
            return k
        lo, hi = 1, k  # need(lo) <= free (this iteration's blocks are already allocated), need(hi) > free
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if need(mid) <= free:
                lo = mid
            else:
                hi = mid
        return lo

    def _preempt(self, req: Request, now: float) -> None:
        self.kv.free(req)
        self._pending_prefill += req.prompt_len - max(0, req.prompt_len - req.num_computed)
        req.num_computed = 0
        req.status = Status.PREEMPTED
        req.num_preemptions += 1
        req.est_cached = 0
        self.stats.preemptions += 1
        self.policy.requeue(req, now)

    def interrupt(self, t: float) -> float:
        """An outside event at `t` inside a decode run: keep only the iterations started before `t`."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("interrupt with nothing in flight")
        if plan.ends is None or t >= plan.end:
            return plan.end
        # Iteration j is in flight at t when ends[j-1] <= t < ends[j]; it completes.
        j = int(np.searchsorted(plan.ends, t, side="right"))
        keep = j + 1
        if keep < plan.steps:
            plan.steps = keep
            plan.ends = plan.ends[:keep]
            plan.end = float(plan.ends[-1])
        return plan.end

    @property
    def planned_end(self) -> float | None:
        return None if self._plan is None else self._plan.end

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
        if steps > 1:
            st.runs += 1
            st.decode_tokens += steps * len(plan.sched)
            ends = plan.ends
            assert ends is not None
            for req, _ in plan.sched:
                if req.status == Status.ABORTED:
                    self._drop_aborted(req, now)
                    continue
                req.num_computed += steps
                kv.extend(req, req.num_computed)
                req.num_output += steps
                if record and req.token_times is not None:
                    req.token_times.extend(ends.tolist())
                out.tokens.append(req)
                if req.num_output >= req.output_len:
                    finished.append(req)
        else:
            if plan.prefill_tokens:
                st.prefill_tokens += plan.prefill_tokens
                self.policy.on_prefill(plan.prefill_tokens, plan.end - plan.start, now)
            for req, n in plan.sched:
                if req.status == Status.ABORTED:
                    self._drop_aborted(req, now)
                    continue
                if req.num_computed < req.prompt_len:
                    self._pending_prefill -= min(n, req.prompt_len - req.num_computed)
                req.num_computed += n
                if req.num_computed == req.prompt_len + req.num_output:
                    req.num_output += 1
                    if req.num_output == 1:
                        req.first_token = now
                        out.first_tokens.append(req)
                    else:
                        st.decode_tokens += 1
                    if record and req.token_times is not None:
                        req.token_times.append(now)
                    out.tokens.append(req)
                    if req.num_output >= req.output_len:
                        finished.append(req)
        if finished:
            running = self.running
            for req in finished:
                running.remove(req)
                kv.free(req)
                req.status = Status.FINISHED
                req.finish = now
                st.finished += 1
                self.policy.on_finish(req, now)
                if self.on_request_done is not None:
                    self.on_request_done(req)
        return out

    def _drop_aborted(self, req: Request, now: float) -> None:
        if req in self.running:
            self.running.remove(req)
        if req.num_computed < req.prompt_len:
            self._pending_prefill -= req.prompt_len - req.num_computed
        self.kv.free(req)
        req.finish = now
        self.stats.aborted += 1
