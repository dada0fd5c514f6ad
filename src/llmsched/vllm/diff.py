"""Differential check: our engine model against vLLM's real v1 scheduler, step by step.

The same request stream goes into vLLM's `Scheduler` (stepped by the fake model runner of `harness`) and into
our `Engine` with identical limits. Time plays no part: request `i` arrives before step `arrival_step`, and our
engine is priced by a cost model in which every iteration takes one second, so its iteration k is vLLM's
step k. Prompts are token ids built so that a shared prefix gives equal block hashes on both sides (vLLM
hashes the tokens; we hash the same token blocks with `core.hashing`), and the fake model samples
request-private tokens, as our engine keeps generated blocks private.

Compared each step: tokens scheduled per request, the preempted requests, and for each admitted request its
computed tokens at admission (its prefix-cache hit). `compare` stops at the first divergence and renders it
with both sides' batches and queue states.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmsched.core.hashing import token_block_hashes
from llmsched.core.types import Request
from llmsched.engine.config import EngineConfig
from llmsched.engine.engine import Engine
from llmsched.model.base import BatchStats
from llmsched.policies.request import REQUEST_POLICIES
from llmsched.vllm.harness import FakeRunnerLoop, Limits, build_scheduler, make_request, request_id


@dataclass(frozen=True)
class DiffRequest:
    """One request of a differential workload."""

    rid: int
    arrival_step: int
    prompt_len: int
    output_len: int
    priority: int = 0
    prefix_group: int = -1  # requests of one group share their first `prefix_len` prompt tokens; -1: none
    prefix_len: int = 0
    tie: bool = False  # arrive at the step's exact time (ties with the step's other arrivals)

    @property
    def arrival_time(self) -> float:
        # Distinct and in rid order within a step unless `tie`.
        return float(self.arrival_step) if self.tie else self.arrival_step + self.rid * 1e-6

    def token_ids(self) -> list[int]:
        """Prompt token ids: the group's shared prefix, then tokens private to this request."""
        shared = min(self.prefix_len, self.prompt_len) if self.prefix_group >= 0 else 0
        g = self.prefix_group
        head = [100 + (g * 7919 + i * 31) % 16000 for i in range(shared)]
        tail = [16100 + (self.rid * 104729 + i * 37) % 15000 for i in range(shared, self.prompt_len)]
        return head + tail


@dataclass
class StepRecord:
    """What one side did in one step, and its queues after it."""

    step: int
    scheduled: dict[int, int]  # rid -> tokens scheduled
    preempted: frozenset[int]
    admitted: dict[int, int]  # rid -> computed tokens at admission (prefix-cache hit)
    running: list[int] = field(default_factory=list)  # after scheduling, in the side's running order
    waiting: list[int] = field(default_factory=list)  # queue order (head first)
    finished: list[int] = field(default_factory=list)
    free_blocks: int = 0  # after the step (free or evictable)

    def key(self) -> tuple[Any, ...]:
        return (self.scheduled, self.preempted, self.admitted)

    def render(self) -> str:
        sched = " ".join(f"{r}:{n}" for r, n in sorted(self.scheduled.items())) or "-"
        adm = " ".join(f"{r}(hit {h})" for r, h in sorted(self.admitted.items())) or "-"
        pre = " ".join(map(str, sorted(self.preempted))) or "-"
        return (
            f"scheduled {sched} | admitted {adm} | preempted {pre} | finished {' '.join(map(str, self.finished)) or '-'}"
            f" | running {self.running} | waiting {self.waiting} | free blocks {self.free_blocks}"
        )


class _UnitCost:
    """Every iteration takes one second: our iteration k is vLLM's step k."""

    needs_class_tokens = False

    def step_time(self, b: BatchStats, now: float) -> float:
        return 1.0

    def decode_run(self, b: BatchStats, k: int, now: float) -> np.ndarray:
        return np.ones(k)

    def kv_capacity_tokens(
        self, gpu_memory_utilization: float
    ) -> int:  # pragma: no cover - num_blocks is given
        raise NotImplementedError


def engine_config(limits: Limits) -> EngineConfig:
    return EngineConfig(
        block_size=limits.block_size,
        max_num_batched_tokens=limits.max_num_batched_tokens,
        max_num_seqs=limits.max_num_seqs,
        enable_chunked_prefill=limits.enable_chunked_prefill,
        enable_prefix_caching=limits.enable_prefix_caching,
        long_prefill_token_threshold=limits.long_prefill_token_threshold,
        num_gpu_blocks=limits.num_blocks,
    )


def _steps(
    reqs: Sequence[DiffRequest], has_work: Callable[[], bool]
) -> Iterator[tuple[int, list[DiffRequest]]]:
    """(step, requests arriving before it) until every request has arrived and `has_work()` is false."""
    arrivals: dict[int, list[DiffRequest]] = {}
    for r in sorted(reqs, key=lambda r: (r.arrival_step, r.rid)):
        arrivals.setdefault(r.arrival_step, []).append(r)
    last = max(arrivals) if arrivals else 0
    step = 0
    while step <= last or has_work():
        yield step, arrivals.get(step, [])
        step += 1


def run_ours(
    reqs: Sequence[DiffRequest],
    limits: Limits,
    state: dict[str, Any] | None = None,
    config: EngineConfig | None = None,
) -> Iterator[StepRecord]:
    """Our engine, one iteration per step (no decode runs), yielding each step's record (`state["engine"]`
    is the engine, for inspection; `config` overrides the engine config derived from `limits`)."""
    policy = REQUEST_POLICIES.get(limits.policy)()
    eng = Engine(_UnitCost(), policy, config or engine_config(limits), num_blocks=limits.num_blocks)
    if state is not None:
        state["engine"] = eng
    bs = limits.block_size
    for step, arriving in _steps(reqs, lambda: eng.has_work):
        for d in arriving:
            toks = d.token_ids()
            r = Request(
                rid=d.rid,
                arrival=d.arrival_time,
                prompt_len=d.prompt_len,
                output_len=d.output_len,
                priority=d.priority,
                block_hashes=token_block_hashes(toks, bs) or None,
            )
            eng.add(r, float(step))
        before = {r.rid for r in eng.running}
        end = eng.start_step(float(step), 1)
        rec = StepRecord(step, {}, frozenset(), {})
        if end is not None:
            plan = eng._plan
            assert plan is not None
            rec.scheduled = {r.rid: 1 for r in eng.decoding.values()}
            for r, n in plan.sched:
                rec.scheduled[r.rid] = n
                if r.rid not in before:
                    rec.admitted[r.rid] = r.num_cached
            rec.preempted = frozenset(r.rid for r in plan.preempted)
            out = eng.finish_step(end)
            rec.finished = sorted(r.rid for r in out.finished)
        rec.running = [r.rid for r in sorted(eng.running, key=lambda r: r.admit_seq)]
        rec.free_blocks = eng.kv.num_free
        rec.waiting = _queue_order(policy, float(step))
        yield rec


def _queue_order(policy: Any, now: float) -> list[int]:
    """Our queue's order, head first (keyed queues: live heap entries by key; other policies: unknown)."""
    heap = getattr(policy, "_heap", None)
    live = getattr(policy, "_live", {})
    if heap is None:
        return []
    return [e[2].rid for e in sorted(heap, key=lambda e: (e[0], e[1])) if live.get(e[2].rid) == e[1]]


def run_vllm(
    reqs: Sequence[DiffRequest], limits: Limits, state: dict[str, Any] | None = None
) -> Iterator[StepRecord]:
    """vLLM's scheduler with the fake runner, yielding each step's record (`state["scheduler"]`)."""
    sched = build_scheduler(limits)
    if state is not None:
        state["scheduler"] = sched
    loop = FakeRunnerLoop(sched)
    bs = limits.block_size
    for step, arriving in _steps(reqs, lambda: loop.has_work):
        for d in arriving:
            loop.add(
                make_request(
                    request_id(d.rid),
                    d.token_ids(),
                    d.output_len,
                    bs,
                    priority=d.priority,
                    arrival_time=d.arrival_time,
                )
            )
        before = {r.request_id for r in sched.running}
        res = loop.step()
        rec = StepRecord(
            step, {int(k): v for k, v in res.scheduled.items()}, frozenset(int(r) for r in res.preempted), {}
        )
        for rid, n in res.scheduled.items():
            if rid not in before:
                # After schedule() num_computed_tokens was the prefix hit plus the tokens scheduled.
                rec.admitted[int(rid)] = res.computed[rid] - n
        rec.running = [int(r.request_id) for r in sched.running]
        rec.waiting = [int(r.request_id) for r in _vllm_waiting(sched)]
        rec.finished = sorted(int(r) for r in res.finished)
        rec.free_blocks = sched.kv_cache_manager.block_pool.get_num_free_blocks()
        yield rec


def _vllm_waiting(sched: Any) -> list[Any]:
    q = sched.waiting
    heap = getattr(q, "_heap", None)
    return sorted(heap) if heap is not None else list(q)


@dataclass
class DiffResult:
    steps: int
    divergence: str | None  # the rendered first divergence, None when identical
    ours: list[StepRecord]
    theirs: list[StepRecord]

    @property
    def identical(self) -> bool:
        return self.divergence is None


def compare(
    reqs: Sequence[DiffRequest],
    limits: Limits,
    context: int = 3,
    max_steps: int = 1_000_000,
    ours_config: EngineConfig | None = None,
) -> DiffResult:
    """Run both sides in lock-step; stop at the first step whose records differ (`ours_config`: give our
    engine other settings than `limits`, to see a divergence)."""
    ours = run_ours(reqs, limits, config=ours_config)
    theirs = run_vllm(reqs, limits)
    a_log: list[StepRecord] = []
    b_log: list[StepRecord] = []
    for k in range(max_steps):
        a = next(ours, None)
        b = next(theirs, None)
        if a is None and b is None:
            return DiffResult(k, None, a_log, b_log)
        if a is not None:
            a_log.append(a)
        if b is not None:
            b_log.append(b)
        if a is None or b is None or a.key() != b.key():
            return DiffResult(k + 1, _render(k, a_log, b_log, context, limits), a_log, b_log)
    return DiffResult(max_steps, f"no end after {max_steps} steps", a_log, b_log)


def _render(step: int, a_log: list[StepRecord], b_log: list[StepRecord], context: int, limits: Limits) -> str:
    lines = [f"first divergence at step {step} ({limits})"]
    for k in range(max(0, step - context), step + 1):
        a = a_log[k] if k < len(a_log) else None
        b = b_log[k] if k < len(b_log) else None
        mark = ">>" if k == step else "  "
        lines.append(f"{mark} step {k}")
        lines.append(f"     llmsched: {a.render() if a else '(ended)'}")
        lines.append(f"     vllm    : {b.render() if b else '(ended)'}")
    a = a_log[step] if step < len(a_log) else None
    b = b_log[step] if step < len(b_log) else None
    if a and b:
        for name, x, y in (("scheduled", a.scheduled, b.scheduled), ("admitted", a.admitted, b.admitted)):
            diff = {r: (x.get(r), y.get(r)) for r in set(x) | set(y) if x.get(r) != y.get(r)}
            if diff:
                lines.append(f"   {name} differs (rid: llmsched, vllm): {dict(sorted(diff.items()))}")
        if a.preempted != b.preempted:
            lines.append(f"   preempted: llmsched {sorted(a.preempted)}, vllm {sorted(b.preempted)}")
    return "\n".join(lines)


def random_workload(
    seed: int,
    num_requests: int = 20,
    max_prompt: int = 200,
    max_output: int = 40,
    arrival_span: int = 30,
    num_groups: int = 3,
    priorities: int = 1,
    ties: bool = False,
) -> list[DiffRequest]:
    """A random stream: uniform lengths and arrival steps, about half the prompts sharing a group prefix."""
    rng = random.Random(seed)
    reqs = []
    for i in range(num_requests):
        p = rng.randint(1, max_prompt)
        g = rng.randrange(num_groups) if num_groups and rng.random() < 0.5 else -1
        reqs.append(
            DiffRequest(
                rid=i,
                arrival_step=rng.randrange(arrival_span + 1),
                prompt_len=p,
                output_len=rng.randint(1, max_output),
                priority=rng.randrange(priorities),
                prefix_group=g,
                prefix_len=rng.randint(0, p) if g >= 0 else 0,
                tie=ties,
            )
        )
    return reqs


def run_cli(
    cases: int,
    seed: int,
    num_requests: int,
    policy: str,
    limits: Limits,
    context: int,
    echo: Any = print,
) -> int:
    """`llmsched vllm-diff`: `cases` random workloads (seeds seed, seed+1, ...) under `limits`, alternating fcfs
    and priority when `policy` is "both"; prints the first divergence and returns 1, or a summary and 0."""
    from dataclasses import replace

    steps = 0
    for i in range(cases):
        pol = ("fcfs", "priority")[i % 2] if policy == "both" else policy
        lim = replace(limits, policy=pol)  # type: ignore[arg-type]
        reqs = random_workload(
            seed + i,
            num_requests=num_requests,
            priorities=3 if pol == "priority" else 1,
            max_prompt=lim.max_num_batched_tokens // 2 if not lim.enable_chunked_prefill else 200,
            max_output=lim.max_num_batched_tokens // 2 if not lim.enable_chunked_prefill else 40,
        )
        need = max(-(-(r.prompt_len + r.output_len) // lim.block_size) for r in reqs)
        if need > lim.num_blocks:
            raise ValueError(
                f"--num-blocks {lim.num_blocks} cannot hold a {need}-block request of the workload"
            )
        res = compare(reqs, lim, context=context)
        steps += res.steps
        if not res.identical:
            echo(f"case {i} (seed {seed + i}, policy {pol}): {len(reqs)} requests")
            echo(res.divergence)
            return 1
    echo(
        f"identical: {cases} workloads, {steps} steps compared (vLLM scheduler vs llmsched engine, {limits})"
    )
    return 0
