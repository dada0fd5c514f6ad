"""pytest plugin: vLLM's own scheduler tests build `llmsched.vllm.Scheduler` instead of vLLM's stock class.

With LLMSCHED_UNDER_TEST=fcfs (or priority) set, the names the tests construct their scheduler from —
`vllm.v1.core.sched.scheduler.Scheduler` (tests/v1/core/test_scheduler.py uses it directly) and
`vllm.v1.core.sched.async_scheduler.AsyncScheduler` (tests/v1/core/utils.py `create_scheduler` picks one of the
two) — are rebound, before the test modules are imported, to our classes (`SyncScheduler` and `Scheduler`),
configured by LLMSCHED_REQUEST_POLICY=<that policy>.

A test that asks vLLM for the other scheduling policy (SchedulerConfig.policy) is skipped with a reason
starting "llmsched-run:"; the run of that policy covers it. Unset: the plugin does nothing (the stock run).
"""

from __future__ import annotations

import os

import pytest

SKIP_PREFIX = "llmsched-run:"


def _guarded(cls: type, policy: str) -> type:
    class Guarded(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            cfg = kwargs.get("vllm_config", args[0] if args else None)
            asked = str(cfg.scheduler_config.policy)
            if asked != policy:
                pytest.skip(
                    f"{SKIP_PREFIX} asks vLLM for --scheduling-policy {asked}; covered by the {asked} run"
                )
            super().__init__(*args, **kwargs)

    Guarded.__name__ = Guarded.__qualname__ = cls.__name__
    Guarded.__module__ = cls.__module__
    return Guarded


def pytest_configure(config) -> None:  # noqa: ARG001 - pytest hook signature
    policy = os.environ.get("LLMSCHED_UNDER_TEST", "").strip()
    if not policy:
        return
    if policy not in ("fcfs", "priority"):
        raise pytest.UsageError(f"LLMSCHED_UNDER_TEST must be fcfs or priority, got {policy!r}")
    os.environ["LLMSCHED_REQUEST_POLICY"] = policy
    import vllm.v1.core.sched.async_scheduler as async_mod
    import vllm.v1.core.sched.diffusion_scheduler  # noqa: F401 - its classes keep vLLM's stock bases
    import vllm.v1.core.sched.scheduler as sched_mod

    from llmsched.vllm.scheduler import Scheduler, SyncScheduler

    sched_mod.Scheduler = _guarded(SyncScheduler, policy)
    async_mod.AsyncScheduler = _guarded(Scheduler, policy)
