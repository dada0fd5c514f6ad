"""The simulator's exact engine: vLLM's real v1 scheduler inside our discrete-event loop, timed by our cost model.

`VllmEngine` speaks the protocol `sim.Cluster` drives an `Engine` with (`add`, `start_step`, `finish_step`,
`interrupt`, `snapshot`, `stats`, `on_request_done`), but every scheduling decision is vLLM's: each step is
`Scheduler.schedule()`, its `SchedulerOutput` is converted to the `BatchStats` our cost model prices (prefill
chunks with their context, decodes with their KV length), and at the step's end the fake model runner of
`harness` samples one token for every request that caught up, through `update_from_output()`. Requests finish
by output length (`max_tokens`, EOS ignored); TTFT/TPOT/E2E are stamped on our `Request` exactly as `Engine`
stamps them. One event per step (no decode runs), so it is exact and slower than `Engine`.

Prompts become token ids such that vLLM's block hashes are equal exactly where our chained `block_hashes` are
(each full block's tokens are derived from its hash; the rest is private to the request), and a request whose
answer a later turn sends back (`output_hashes`) samples the tokens of those blocks, so multi-turn follow-ups hit
vLLM's prefix cache as they hit ours.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np

from llmsched.core.types import InstanceSnapshot, Request, Status
from llmsched.engine.config import EngineConfig
from llmsched.engine.engine import EngineStats, StepOutput
from llmsched.model.base import BatchStats, StepCostModel
from llmsched.vllm.harness import (
    FakeRunnerLoop,
    KVCacheTooSmall,
    Limits,
    account,
    build_scheduler,
    fake_runner_output,
    make_request,
    request_id,
)


@cache
def _multipliers(block_size: int) -> np.ndarray:
    m = [(0x9E3779B97F4A7C15 + j * 0x632BE59BD9B4E019) % (1 << 64) | 1 for j in range(block_size)]
    return np.array(m, dtype=np.uint64)


def block_tokens(hashes: np.ndarray, block_size: int) -> np.ndarray:
    """Token ids (1000..30999) of full blocks, derived from their chained hashes: equal hash, equal tokens."""
    h = hashes.astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        mixed = h[:, None] * _multipliers(block_size)[None, :]
    return (mixed >> np.uint64(40)) % np.uint64(30000) + np.uint64(1000)


def _private(rid: int, start: int, stop: int) -> list[int]:
    return [1000 + zlib.crc32(f"{rid}:{p}".encode()) % 30000 for p in range(start, stop)]


class VllmEngine:
    """One instance whose scheduling is vLLM's own `Scheduler` (see the module docstring)."""

    def __init__(
        self,
        cost: StepCostModel,
        policy_name: str,
        config: EngineConfig | None = None,
        instance: int = 0,
        record_token_times: bool = False,
        num_blocks: int | None = None,
    ) -> None:
        if policy_name not in ("fcfs", "priority"):
            raise ValueError(
                f"--engine vllm runs vLLM's own scheduler, whose waiting queue is fcfs or priority; got request"
                f" policy {policy_name!r} (use --engine llmsched, or llmsched.vllm.Scheduler inside vLLM)"
            )
        self.cfg = cfg = config or EngineConfig()
        self.cost = cost
        self.instance = instance
        self.record_token_times = record_token_times
        if num_blocks is None:
            num_blocks = (
                cfg.num_gpu_blocks or cost.kv_capacity_tokens(cfg.gpu_memory_utilization) // cfg.block_size
            )
        self.bs = cfg.block_size
        self.limits = Limits.from_engine_config(cfg, num_blocks, policy_name)
        self.sched = build_scheduler(self.limits, log_stats=False)
        self.loop = FakeRunnerLoop(self.sched)
        self._answers: dict[str, tuple[int, np.ndarray]] = {}  # request id -> (first answer position, tokens)
        self._reqs: dict[str, Request] = {}
        self._decoding: set[str] = set()  # requests that sampled a token and have not been preempted since
        self._needs_classes = bool(getattr(cost, "needs_class_tokens", False))
        self._plan: tuple[Any, float, float, int, int] | None = (
            None  # (SchedulerOutput, start, end, prefill, decode)
        )
        self.stats = EngineStats()
        self.kv = _KvView(self)
        self.on_request_done: Callable[[Request], None] | None = None

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self._plan is not None

    @property
    def planned_end(self) -> float | None:
        return None if self._plan is None else self._plan[2]

    @property
    def num_running(self) -> int:
        return len(self.sched.running)

    @property
    def num_waiting(self) -> int:
        return len(self.sched.waiting) + len(getattr(self.sched, "kv_holding_waiting", ()))

    @property
    def has_work(self) -> bool:
        return self.sched.get_num_unfinished_requests() > 0

    def snapshot(self, now: float) -> InstanceSnapshot:
        s = self.sched
        pool = s.kv_cache_manager.block_pool
        pending = 0
        # schedule() advanced num_computed_tokens by the step in flight; those tokens are not computed yet.
        inflight = self._plan[0].num_scheduled_tokens if self._plan is not None else {}
        for r in self._reqs.values():
            if r.status in (Status.WAITING, Status.PREEMPTED):
                pending += r.prompt_len - r.est_cached
            elif r.status == Status.RUNNING:
                vid = request_id(r.rid)
                v = s.requests.get(vid)
                if v is not None:
                    done = v.num_computed_tokens - inflight.get(vid, 0)
                    pending += max(0, r.prompt_len - done)
        free = pool.get_num_free_blocks()
        total = self.limits.num_blocks
        return InstanceSnapshot(
            instance=self.instance,
            time=now,
            num_running=len(s.running),
            num_waiting=self.num_waiting,
            kv_usage=(total - free) / total,
            num_free_blocks=free,
            num_total_blocks=total,
            pending_prefill_tokens=pending,
            prefix_queries=self.kv.queries,
            prefix_hits=self.kv.hits,
        )

    # -- requests in -----------------------------------------------------------------------------------
    def _prompt_tokens(self, req: Request) -> list[int]:
        bs = self.bs
        hashes = req.block_hashes or ()
        n_full = min(len(hashes), req.prompt_len // bs)
        toks: list[int] = (
            block_tokens(np.array(hashes[:n_full], dtype=np.int64), bs).ravel().tolist() if n_full else []
        )
        start = n_full * bs
        rid = request_id(req.rid)
        if req.output_hashes and n_full == req.prompt_len // bs:
            # The answer's blocks continue the prompt's: the tail of the prompt and the answer are their tokens.
            ans = block_tokens(np.array(req.output_hashes, dtype=np.int64), bs).ravel()
            toks += ans[: req.prompt_len - start].tolist()
            self._answers[rid] = (start, ans)
        else:
            toks += _private(req.rid, start, req.prompt_len)
        return toks

    def _sample(self, rid: str, position: int) -> int:
        ans = self._answers.get(rid)
        if ans is not None and 0 <= position - ans[0] < len(ans[1]):
            return int(ans[1][position - ans[0]])
        return 1000 + zlib.crc32(f"{rid}:{position}".encode()) % 30000

    def add(self, req: Request, now: float) -> None:
        if req.prompt_len < 1 or req.output_len < 1:
            raise ValueError(f"request {req.rid}: prompt_len and output_len must be >= 1")
        lim = self.limits
        if -(-(req.prompt_len + req.output_len) // self.bs) > lim.num_blocks:
            raise ValueError(
                f"request {req.rid}: {req.prompt_len}+{req.output_len} tokens exceed this instance's KV capacity"
                f" ({lim.num_blocks} blocks of {self.bs})"
            )
        if req.prompt_len + req.output_len > lim.model_len:
            raise ValueError(
                f"request {req.rid}: {req.prompt_len}+{req.output_len} tokens exceed max_model_len ({lim.model_len})"
                + ("; chunked prefill is off" if not lim.enable_chunked_prefill else "")
            )
        rid = request_id(req.rid)
        if rid in self._reqs:
            raise ValueError(f"request {req.rid} was added twice")
        vreq = make_request(
            rid,
            self._prompt_tokens(req),
            req.output_len,
            self.bs,
            priority=req.priority,
            arrival_time=req.arrival,
        )
        req.status = Status.WAITING
        req.instance = self.instance
        req.queued_at = now
        if self.record_token_times and req.token_times is None:
            req.token_times = []
        req.est_cached = 0
        if lim.enable_prefix_caching:
            _, hit, *_ = self.sched.kv_cache_manager.get_computed_blocks(vreq)
            req.est_cached = min(hit, req.prompt_len - 1)
        self._reqs[rid] = req
        self.loop.add(vreq)

    # -- steps -----------------------------------------------------------------------------------------
    def start_step(self, now: float, max_run: int = 1) -> float | None:
        """Schedule one vLLM step and price it; None when vLLM has nothing to schedule."""
        if self._plan is not None:
            raise RuntimeError("start_step called while a step is in flight")
        s = self.sched
        if s.get_num_unfinished_requests() == 0:
            return None
        before = {r.request_id for r in s.running}
        out = s.schedule()
        b = BatchStats()
        classes: dict[str, int] | None = {} if self._needs_classes else None
        for rid in getattr(out, "preempted_req_ids", None) or ():
            self._on_preempt(rid)
        for rid, n in out.num_scheduled_tokens.items():
            v = s.requests[rid]
            req = self._reqs[rid]
            c = v.num_computed_tokens - n  # computed before this step (schedule() advanced it)
            if rid not in before:  # admitted in this step: c is its prefix-cache hit
                self._on_admit(req, c, now)
            account(b, n, c, rid in self._decoding)
            if classes is not None:
                k = req.cls or ""
                classes[k] = classes.get(k, 0) + (1 if rid in self._decoding else n)
        b.class_tokens = classes
        if not out.num_scheduled_tokens:
            if out.preempted_req_ids:  # a step that only preempted: vLLM runs no model; zero duration
                self._plan = (out, now, now, 0, 0)
                return now
            raise KVCacheTooSmall(
                f"instance {self.instance}: vLLM scheduled nothing with {self.num_waiting} requests waiting"
            )
        end = now + self.cost.step_time(b, now)
        self._plan = (out, now, end, b.prefill_tokens, b.decode_tokens)
        return end

    def _on_admit(self, req: Request, hit: int, now: float) -> None:
        req.num_cached = hit
        req.num_computed = hit
        if req.first_scheduled < 0:
            req.first_scheduled = now
        req.status = Status.RUNNING
        self.kv.queries += req.prompt_len
        self.kv.hits += hit

    def _on_preempt(self, rid: str) -> None:
        req = self._reqs[rid]
        self._decoding.discard(rid)
        req.status = Status.PREEMPTED
        req.num_preemptions += 1
        req.est_cached = 0
        req.num_computed = 0
        self.stats.preemptions += 1

    def interrupt(self, t: float) -> float:
        """A step cannot be cut: the step in flight completes (vLLM never splits one)."""
        if self._plan is None:
            raise RuntimeError("interrupt with nothing in flight")
        return self._plan[2]

    def finish_step(self, now: float) -> StepOutput:
        plan = self._plan
        if plan is None:
            raise RuntimeError("finish_step with nothing in flight")
        self._plan = None
        out, start, end, prefill, decode = plan
        s = self.sched
        st = self.stats
        st.steps += 1
        st.busy_time += end - start
        st.prefill_tokens += prefill
        st.decode_tokens += decode
        res = StepOutput(end=end, preempted=[self._reqs[r] for r in (out.preempted_req_ids or ())])
        if not out.num_scheduled_tokens:
            return res
        runner = fake_runner_output(s, out, self._sample)
        for rid in out.num_scheduled_tokens:
            self._reqs[rid].num_computed = s.requests[rid].num_computed_tokens
        outputs = s.update_from_output(out, runner)
        record = self.record_token_times
        for eco in outputs.values():
            for o in eco.outputs:
                req = self._reqs[o.request_id]
                if o.new_token_ids:
                    req.num_output += len(o.new_token_ids)
                    if req.first_token < 0:
                        req.first_token = end
                        res.first_tokens.append(req)
                    if record and req.token_times is not None:
                        req.token_times.append(end)
                    self._decoding.add(o.request_id)
                if o.finish_reason is not None:
                    self._decoding.discard(o.request_id)
                    del self._reqs[o.request_id]
                    req.status = Status.FINISHED
                    req.finish = end
                    st.finished += 1
                    res.finished.append(req)
                    if self.on_request_done is not None:
                        self.on_request_done(req)
        return res


class _KvView:
    """What the simulator's report reads of an engine's KV cache (`num_blocks`, prefix queries and hits)."""

    def __init__(self, eng: VllmEngine) -> None:
        self._eng = eng
        self.num_blocks = eng.limits.num_blocks
        self.queries = 0
        self.hits = 0


def build_vllm_engine(cost: StepCostModel, cfg: Any, instance: int) -> VllmEngine:
    """The exact engine of instance `instance` of a `SimConfig` (`engine_kind: vllm`)."""
    from llmsched.vllm.harness import require_vllm

    require_vllm()
    if cfg.request_params:
        raise ValueError("--engine vllm: vLLM's fcfs/priority queues take no --request-params")
    return VllmEngine(
        cost, cfg.request_policy, cfg.engine, instance=instance, record_token_times=cfg.record_token_times
    )
