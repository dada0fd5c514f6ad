"""llmsched.vllm.Scheduler: vLLM's scheduler with our request policies as its waiting queue."""

from __future__ import annotations

import pytest
from vllm.config import SchedulerConfig
from vllm.utils.import_utils import resolve_obj_by_qualname
from vllm.v1.core.sched.scheduler import Scheduler as VllmScheduler
from vllm_workload import random_stream, run

import llmsched.vllm
from llmsched.model import BatchStats
from llmsched.vllm.harness import FakeRunnerLoop, Limits, build_scheduler, fake_runner_output, make_request
from llmsched.vllm.scheduler import PARAMS_ENV, POLICY_ENV, Scheduler, SyncScheduler

# Small caches and budgets so that chunked prefill, queueing and preemption all happen; each shape runs with
# three seeds (15 workloads of 40 requests).
SHAPES = [
    (128, 4, 48, False),
    (256, 8, 64, True),
    (512, 16, 80, True),
    (96, 6, 40, False),
    (256, 3, 200, True),
]
CASES = [
    (seed, Limits(max_num_batched_tokens=bt, max_num_seqs=seqs, num_blocks=blocks, enable_prefix_caching=pc))
    for seed, (bt, seqs, blocks, pc) in enumerate(SHAPES * 3)
]


def _preemptions(trace: list[tuple]) -> int:
    return sum(len(p) for _, p in trace)


@pytest.mark.parametrize(("seed", "limits"), CASES)
def test_fcfs_schedules_step_for_step_as_stock(seed: int, limits: Limits, monkeypatch) -> None:
    monkeypatch.setenv(POLICY_ENV, "fcfs")
    stream = random_stream(seed, shared=limits.enable_prefix_caching)
    stock = run(None, limits, stream)
    ours = run(Scheduler, limits, stream)
    assert ours == stock


def test_the_random_cases_preempt() -> None:
    """The step-for-step comparisons above only mean something if preemption happens in them."""
    preempted = [
        _preemptions(run(None, lim, random_stream(seed, shared=lim.enable_prefix_caching)))
        for seed, lim in CASES[:2]
    ]
    assert all(n > 0 for n in preempted), preempted


@pytest.mark.parametrize(("seed", "limits"), [c for c in CASES if c[1].num_blocks < 100])
def test_priority_schedules_step_for_step_as_stock_priority(seed: int, limits: Limits, monkeypatch) -> None:
    monkeypatch.setenv(POLICY_ENV, "priority")
    lim = Limits(**{**limits.__dict__, "policy": "priority"})
    stream = random_stream(seed + 100, shared=lim.enable_prefix_caching)
    stock = run(None, lim, stream)
    ours = run(Scheduler, lim, stream)
    assert _preemptions(stock) > 0
    assert ours == stock


def test_sync_class_matches_stock_too(monkeypatch) -> None:
    monkeypatch.setenv(POLICY_ENV, "fcfs")
    seed, limits = CASES[0]
    stream = random_stream(seed)
    assert run(SyncScheduler, limits, stream) == run(None, limits, stream)


def test_unset_policy_follows_vllm_scheduling_policy(monkeypatch) -> None:
    monkeypatch.delenv(POLICY_ENV, raising=False)
    assert build_scheduler(Limits(policy="priority"), Scheduler).llmsched_policy.name == "priority"
    assert build_scheduler(Limits(), Scheduler).llmsched_policy.name == "fcfs"


LENGTHS = {"long0": 900, "long1": 700, "short0": 20, "long2": 800, "short1": 30, "short2": 10}


def _admission_order(policy: str, monkeypatch, params: str = "{}",
                     priorities: dict[str, int] | None = None) -> list[str]:
    """Requests queued at once (long ones first), one admitted per step: the order they start."""
    monkeypatch.setenv(POLICY_ENV, policy)
    monkeypatch.setenv(PARAMS_ENV, params)
    sched = build_scheduler(Limits(max_num_batched_tokens=2048, max_num_seqs=1, num_blocks=400), Scheduler)
    loop = FakeRunnerLoop(sched)
    for i, (rid, n) in enumerate(LENGTHS.items()):
        prio = (priorities or {}).get(rid, 0)
        loop.add(make_request(rid, [7 + i] * n, 2, 16, priority=prio, arrival_time=float(i)))
    order: list[str] = []
    while loop.has_work:
        order.extend(d.req_id for d in loop.step().output.scheduled_new_reqs)
    return order


def test_sjf_admits_short_first(monkeypatch) -> None:
    assert _admission_order("sjf", monkeypatch) == ["short2", "short0", "short1", "long1", "long2", "long0"]
    assert _admission_order("fcfs", monkeypatch) == ["long0", "long1", "short0", "long2", "short1", "short2"]


def test_gimbal_ranks_by_priority_aged_size(monkeypatch) -> None:
    """Gimbal's SJF with priority-aware aging through vLLM's queue: requests start in the order of
    arrival + size / r_p with r_p = aging_rate x priority_factor^-p (vLLM: a lower value is a higher priority),
    so the high-priority long1 starts before short requests that SJF would run first."""
    rate, factor = 50.0, 4.0
    prio = {"long1": -1}
    order = _admission_order("gimbal", monkeypatch,
                             f'{{"aging_rate": {rate}, "priority_factor": {factor}}}', prio)
    key = {rid: i + n / (rate * factor ** -prio.get(rid, 0)) for i, (rid, n) in enumerate(LENGTHS.items())}
    assert order == sorted(LENGTHS, key=key.__getitem__)
    assert order.index("long1") < order.index("short1")  # its class ages 4x faster: it overtakes a short job
    assert _admission_order("gimbal", monkeypatch, f'{{"aging_rate": {rate}, "priority_factor": {factor}}}') == \
        sorted(LENGTHS, key=lambda r: list(LENGTHS).index(r) + LENGTHS[r] / rate)


def test_preemption_requeues_through_the_policy(monkeypatch) -> None:
    """A preempted request goes back through our policy's `requeue` and is admitted again."""
    monkeypatch.setenv(POLICY_ENV, "sjf")
    sched = build_scheduler(Limits(max_num_batched_tokens=64, max_num_seqs=4, num_blocks=12), Scheduler)
    calls: list[int] = []
    policy = sched.llmsched_policy
    orig = policy.requeue
    policy.requeue = lambda req, now: (calls.append(req.rid), orig(req, now))[1]  # type: ignore[method-assign]
    loop = FakeRunnerLoop(sched)
    for i in range(4):
        loop.add(make_request(f"q{i}", [50 + i] * 40, 30, 16, arrival_time=float(i)))
    preempted, finished = [], []
    while loop.has_work:
        r = loop.step()
        preempted += r.preempted
        finished += r.finished
    assert preempted and len(calls) >= len(preempted)
    assert sorted(finished) == ["q0", "q1", "q2", "q3"]
    assert not sched.waiting._mirrors  # every mirror dropped at finish


def _feedback_run(monkeypatch, cost_model: str | None) -> tuple[list, list, object]:
    """Five prompts through ewsjf; the clock moves 0.03 s inside each step (schedule -> update)."""
    monkeypatch.setenv(POLICY_ENV, "ewsjf")
    if cost_model:
        monkeypatch.setenv("LLMSCHED_COST_MODEL", cost_model)
    else:
        monkeypatch.delenv("LLMSCHED_COST_MODEL", raising=False)
    sched = build_scheduler(Limits(max_num_batched_tokens=256, max_num_seqs=8, num_blocks=300), Scheduler)
    prefills: list[tuple[int, float]] = []
    done: list[tuple[int, float, float]] = []
    policy = sched.llmsched_policy
    on_prefill, on_finish = policy.on_prefill, policy.on_finish
    policy.on_prefill = lambda n, s, now: (prefills.append((n, s)), on_prefill(n, s, now))[1]  # type: ignore[method-assign]
    policy.on_finish = lambda r, now: (done.append((r.rid, r.first_token, r.finish)), on_finish(r, now))[1]  # type: ignore[method-assign]
    t = [0.0]
    sched.clock = lambda: t[0]
    for i in range(5):
        sched.add_request(make_request(f"f{i}", [9 + i] * (100 + 50 * i), 3, 16, arrival_time=0.0))
    while sched.has_requests():
        out = sched.schedule()
        t[0] += 0.03
        sched.update_from_output(out, fake_runner_output(sched, out))
        t[0] += 0.01
    return prefills, done, sched


def test_feedback_measured_step_time(monkeypatch) -> None:
    """Without a cost model, on_prefill gets the step's measured time (schedule -> update_from_output)."""
    prefills, done, _ = _feedback_run(monkeypatch, None)
    assert sum(n for n, _ in prefills) == sum(100 + 50 * i for i in range(5))
    assert [s for _, s in prefills] == pytest.approx([0.03] * len(prefills))
    assert sorted(r for r, _, _ in done) == list(range(5))
    assert all(0 < ft <= fin for _, ft, fin in done)


def test_feedback_cost_model_estimate(monkeypatch) -> None:
    """With LLMSCHED_COST_MODEL, on_prefill gets our cost model's time of the step instead."""
    prefills, done, sched = _feedback_run(monkeypatch, "llama-2-13b@a100-80g")
    first = prefills[0]
    assert first[0] == 256  # the first step: one full token budget of prompt
    # f0 whole (100), f1 whole (150), 6 tokens of f2
    b = BatchStats(prefill_tokens=256, prefill_pairs=100 * 50.5 + 150 * 75.5 + 6 * 3.5, prefill_seqs=3)
    assert first[1] == pytest.approx(sched.llmsched_cost_model.step_time(b, 0.0))
    assert first[1] != pytest.approx(0.03)
    assert len(done) == 5


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({POLICY_ENV: "nope"}, "LLMSCHED_REQUEST_POLICY='nope' is not a request policy; valid: "),
        ({POLICY_ENV: "sjf", PARAMS_ENV: "{bad"}, "LLMSCHED_REQUEST_PARAMS is not valid JSON"),
        ({POLICY_ENV: "sjf", PARAMS_ENV: "[1]"}, "LLMSCHED_REQUEST_PARAMS must be a JSON object"),
        (
            {POLICY_ENV: "sjf", PARAMS_ENV: '{"no_such": 1}'},
            "LLMSCHED_REQUEST_PARAMS: invalid parameters for sjf",
        ),
        ({"LLMSCHED_COST_MODEL": "gpt@x"}, "LLMSCHED_COST_MODEL='gpt@x' must be MODEL@GPU"),
    ],
)
def test_bad_environment_is_a_clear_error(env: dict[str, str], needle: str, monkeypatch) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError) as e:
        build_scheduler(Limits(), Scheduler)
    assert needle in str(e.value)
    if "valid: " in needle:
        assert "fcfs" in str(e.value) and "sjf" in str(e.value) and "ewsjf" in str(e.value)


def test_scheduler_cls_resolves_as_engine_core_does() -> None:
    """EngineCore resolves `--scheduler-cls` with SchedulerConfig.get_scheduler_cls (resolve_obj_by_qualname)."""
    assert resolve_obj_by_qualname("llmsched.vllm.Scheduler") is Scheduler
    assert llmsched.vllm.Scheduler is Scheduler
    cfg = SchedulerConfig.default_factory(scheduler_cls="llmsched.vllm.Scheduler")
    assert cfg.get_scheduler_cls() is Scheduler


def test_serve_command_line_selects_our_class(monkeypatch) -> None:
    """The flags of docs/vllm.md, parsed by vLLM's own argument parser into the config EngineCore reads."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from llmsched.vllm.harness import model_dir

    if not current_platform.device_type:  # no GPU here: vLLM cannot infer a device type
        monkeypatch.setattr(current_platform, "device_type", "cpu")
    parser = EngineArgs.add_cli_args(FlexibleArgumentParser())
    args = parser.parse_args(
        ["--model", model_dir(), "--skip-tokenizer-init", "--scheduler-cls", "llmsched.vllm.Scheduler"]
    )
    cfg = EngineArgs.from_cli_args(args).create_engine_config()
    assert cfg.scheduler_config.get_scheduler_cls() is Scheduler
    assert cfg.scheduler_config.async_scheduling  # vLLM keeps async scheduling on: our class does both
    eplb = parser.parse_args(
        [
            "--model", model_dir(), "--enable-expert-parallel", "--enable-eplb",
            "--eplb-config", '{"window_size": 100, "step_interval": 100, "num_redundant_experts": 32}',
        ]
    )  # fmt: skip
    ea = EngineArgs.from_cli_args(eplb)
    assert ea.enable_eplb and ea.enable_expert_parallel
    assert (ea.eplb_config.window_size, ea.eplb_config.step_interval) == (100, 100)


def test_vllms_methods_unchanged_without_our_init(monkeypatch) -> None:
    """vLLM's own tests build `object.__new__(Scheduler)` and set attributes by hand; our overrides then
    defer to vLLM's methods instead of failing on state that __init__ would have made."""
    called = []
    for name in ("schedule", "update_from_output", "_free_request"):
        monkeypatch.setattr(VllmScheduler, name, lambda self, *a, _n=name, **k: called.append(_n) or _n)
    bare = object.__new__(SyncScheduler)
    assert bare.llmsched_queue is None
    assert bare.schedule() == "schedule"
    assert bare.update_from_output(object(), object()) == "update_from_output"
    assert bare._free_request(object()) == "_free_request"
    assert called == ["schedule", "update_from_output", "_free_request"]
