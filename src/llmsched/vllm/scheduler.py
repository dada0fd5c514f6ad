"""`llmsched.vllm.Scheduler`: vLLM's v1 scheduler with its waiting queue replaced by one of our request policies.

Use: `vllm serve MODEL --scheduler-cls llmsched.vllm.Scheduler` with the policy in the environment (read when
the scheduler is built, i.e. in vLLM's engine-core process):

- `LLMSCHED_REQUEST_POLICY`: a name of our request-policy registry (fcfs, priority, sjf, sjf-aging, ewsjf, ...);
  unset, it is vLLM's own `--scheduling-policy` (fcfs unless set), so the class is a drop-in replacement.
- `LLMSCHED_REQUEST_PARAMS`: the policy's parameters as a JSON object (e.g. `{"max_wait_s": 30}`).
- `LLMSCHED_COST_MODEL`: `MODEL@GPU` of our cost-model presets (e.g. `llama-2-13b@a100-80g`); when set, the
  prefill timings fed to the policy (`on_prefill`) are our cost model's estimate of each step; unset, they are
  the measured wall time of the step (from `schedule()` to its `update_from_output()`), which is what a real
  engine offers. Use the cost model when the model runner is not real (the fake runner of the tests).

Everything else is vLLM's: running requests, token budget, KV allocation, chunked prefill, prefix caching,
the rule that a step which preempted admits nothing. The preemption victim follows our policy: the latest
admitted request (vLLM's FCFS rule) unless the policy ranks by priority (`preempt_by_priority`), then the
lowest priority, latest arrival (vLLM's priority rule). `kv_holding_waiting` (requests that already hold KV
blocks, drained first) stays vLLM's own queue.

The class subclasses vLLM's `AsyncScheduler` (the one vLLM recommends for custom schedulers) and does the
async bookkeeping only when `--async-scheduling` is on, so it behaves as whichever class vLLM would have
picked. `SyncScheduler` is the same on vLLM's plain `Scheduler`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.request_queue import SchedulingPolicy, create_request_queue
from vllm.v1.core.sched.scheduler import Scheduler as VllmScheduler
from vllm.v1.request import RequestStatus

from llmsched.core.types import Status
from llmsched.model.base import BatchStats
from llmsched.policies.request import REQUEST_POLICIES, RequestPolicy
from llmsched.vllm._env import create_from_env
from llmsched.vllm.harness import account
from llmsched.vllm.queue import PolicyQueue

logger = logging.getLogger(__name__)

POLICY_ENV = "LLMSCHED_REQUEST_POLICY"
PARAMS_ENV = "LLMSCHED_REQUEST_PARAMS"
COST_MODEL_ENV = "LLMSCHED_COST_MODEL"

_DONE = {
    RequestStatus.FINISHED_STOPPED,
    RequestStatus.FINISHED_LENGTH_CAPPED,
    getattr(RequestStatus, "FINISHED_REPETITION", RequestStatus.FINISHED_STOPPED),
}


def policy_from_env(default: str = "fcfs", env: dict[str, str] | None = None) -> RequestPolicy:
    """The request policy named by LLMSCHED_REQUEST_POLICY / LLMSCHED_REQUEST_PARAMS (ValueError naming them)."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    name = (env.get(POLICY_ENV) or default).strip()
    if name not in REQUEST_POLICIES:
        raise ValueError(
            f"{POLICY_ENV}={name!r} is not a request policy; valid: {', '.join(REQUEST_POLICIES.names())}"
        )
    return create_from_env(REQUEST_POLICIES, name, PARAMS_ENV, env)


def cost_model_from_env(env: dict[str, str] | None = None) -> Any | None:
    """Our cost model named by LLMSCHED_COST_MODEL=`MODEL@GPU`, or None when unset."""
    env = os.environ if env is None else env  # type: ignore[assignment]
    spec = (env.get(COST_MODEL_ENV) or "").strip()
    if not spec:
        return None
    from llmsched.model import build_cost_model, list_gpus, list_llms

    model, sep, gpu = spec.partition("@")
    if not sep or model not in list_llms() or gpu not in list_gpus():
        raise ValueError(
            f"{COST_MODEL_ENV}={spec!r} must be MODEL@GPU with MODEL in {', '.join(list_llms())}"
            f" and GPU in {', '.join(list_gpus())}"
        )
    return build_cost_model(model, gpu)


class _PolicyQueueMixin:
    """The part shared by `Scheduler` and `SyncScheduler` (mixed in before vLLM's class)."""

    llmsched_policy: RequestPolicy
    # None when an instance was made without __init__ (vLLM's tests do `object.__new__(Scheduler)`): then
    # every override below is vLLM's method unchanged.
    llmsched_queue: PolicyQueue | None = None
    clock: Callable[[], float] = staticmethod(time.time)  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        vllm_policy = self.scheduler_config.policy  # type: ignore[attr-defined]
        policy = policy_from_env(default=str(vllm_policy))
        self.llmsched_policy = policy
        self.llmsched_cost_model = cost_model_from_env()
        # Our own handle on the queue: the feedback below must not depend on what `self.waiting` is later.
        self.llmsched_queue = PolicyQueue(policy, clock=lambda: self.clock())
        self.waiting = self.llmsched_queue
        want = SchedulingPolicy.PRIORITY if policy.preempt_by_priority else SchedulingPolicy.FCFS
        if want != self.policy:  # type: ignore[has-type]
            logger.warning(
                "llmsched: %s=%s overrides --scheduling-policy %s (waiting order and preemption victim)",
                POLICY_ENV,
                policy.name,
                vllm_policy,
            )
            self.policy = want
            self.kv_holding_waiting = create_request_queue(want)
        # Steps with prefill work awaiting their update_from_output (two in flight with async scheduling).
        self._llmsched_steps: list[tuple[Any, float, BatchStats]] = []
        logger.info("llmsched: waiting queue = %s %s", policy.name, policy.get_params())

    # -- one step --------------------------------------------------------------------------------------
    def schedule(self, *args: Any, **kwargs: Any) -> Any:
        q = self.llmsched_queue
        if q is None:
            return super().schedule(*args, **kwargs)  # type: ignore[misc]
        now = self.clock()
        q.begin_step(now)
        try:
            out = super().schedule(*args, **kwargs)  # type: ignore[misc]
        finally:
            q.end_step()
        for data in out.scheduled_new_reqs:
            m = q.get_mirror(data.req_id)
            if m is not None:
                if m.first_scheduled < 0:
                    m.first_scheduled = now
                m.status = Status.RUNNING
        b = self._batch_stats(out)
        if b.prefill_tokens:
            self._llmsched_steps = [*self._llmsched_steps[-7:], (out, now, b)]
        return out

    def _batch_stats(self, out: Any) -> BatchStats:
        """The step as our cost model sees it: prompt chunks vs one-token decodes."""
        b = BatchStats()
        reqs = self.requests  # type: ignore[attr-defined]
        for rid, n in out.num_scheduled_tokens.items():
            r = reqs.get(rid)
            if r is None:
                continue
            before = r.num_computed_tokens - n  # schedule() already advanced it
            account(b, n, before, decode=before >= r.num_tokens - 1)  # decode: plus any speculative tokens
        return b

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> Any:
        q = self.llmsched_queue
        if q is not None:
            self._llmsched_feedback(q, scheduler_output, model_runner_output)
        return super().update_from_output(scheduler_output, model_runner_output)  # type: ignore[misc]

    def _llmsched_feedback(self, q: PolicyQueue, scheduler_output: Any, model_runner_output: Any) -> None:
        """First-token times of the mirrors, and on_prefill for a step with prompt work."""
        now = self.clock()
        idx = model_runner_output.req_id_to_index
        sampled = model_runner_output.sampled_token_ids
        for rid in scheduler_output.num_scheduled_tokens:
            m = q.get_mirror(rid)
            i = idx.get(rid)
            if m is None or i is None or i >= len(sampled) or len(sampled[i]) == 0:
                continue
            m.num_output += len(sampled[i])
            if m.first_token < 0:
                m.first_token = now
        step = next((s for s in self._llmsched_steps if s[0] is scheduler_output), None)
        if step is not None:
            self._llmsched_steps.remove(step)
            _, start, b = step
            cm = self.llmsched_cost_model
            seconds = cm.step_time(b, start) if cm is not None else now - start
            self.llmsched_policy.on_prefill(b.prefill_tokens, seconds, now)

    def _free_request(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        q = self.llmsched_queue
        m = q.forget(request.request_id) if q is not None else None
        if m is not None and request.status in _DONE:
            now = self.clock()
            m.finish = now
            m.status = Status.FINISHED
            if m.first_token < 0:
                m.first_token = now
            self.llmsched_policy.on_finish(m, now)
        return super()._free_request(request, *args, **kwargs)  # type: ignore[misc]


class Scheduler(_PolicyQueueMixin, AsyncScheduler):
    """vLLM's scheduler (async or not, as configured) with one of our request policies as the waiting queue."""

    def _update_after_schedule(self, scheduler_output: Any) -> None:
        if self.scheduler_config.async_scheduling:
            AsyncScheduler._update_after_schedule(self, scheduler_output)
        else:
            VllmScheduler._update_after_schedule(self, scheduler_output)


class SyncScheduler(_PolicyQueueMixin, VllmScheduler):
    """The same on vLLM's synchronous `Scheduler` (for callers that name that class)."""
