"""Gimbal's SJF with priority-aware aging: its order, its per-class starvation bound (property-tested on
adversarial streams of short jobs), and its use as the engine's waiting queue and the gateway's admission queue."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_request_keyed import REQ, make

from llmsched.core.types import Request
from llmsched.gateway.breaker import CircuitBreaker
from llmsched.gateway.dispatcher import Dispatcher
from llmsched.gateway.openai_req import COMPLETIONS, BadRequest, build_request, parse_body
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES
from llmsched.policies.request.gimbal import Gimbal
from llmsched.sim.config import SimConfig
from llmsched.sim.run import simulate


def gimbal(**params: object) -> Gimbal:
    return REQUEST_POLICIES.create("gimbal", params)  # type: ignore[return-value]


def drain(pol: Gimbal | object, reqs: list[Request], now: float) -> list[Request]:
    for r in reqs:
        pol.push(r, now)  # type: ignore[attr-defined]
    out = []
    while (r := pol.peek(now)) is not None:  # type: ignore[attr-defined]
        assert pol.pop(now) is r  # type: ignore[attr-defined]
        out.append(r)
    return out


def test_class_rates() -> None:
    pol = gimbal(aging_rate=50.0, priority_factor=4.0)
    assert pol.rate(0) == 50.0 and pol.rate(-1) == 200.0 and pol.rate(-2) == 800.0 and pol.rate(1) == 12.5
    assert 0 < pol.rate(10**9) < pol.rate(1) and np.isfinite(pol.rate(-(10**9)))  # any int priority is usable
    assert gimbal(class_rates={-1: 1000.0}).rate(-1) == 1000.0
    with pytest.raises(ValueError, match="class_rates"):
        gimbal(class_rates={0: 0.0})
    with pytest.raises(ValueError, match="priority_factor"):
        gimbal(priority_factor=0.5)


@given(specs=st.lists(REQ, max_size=60), factor=st.floats(1.0, 10.0), rate=st.floats(1.0, 1e4))
@settings(max_examples=60, deadline=None)
def test_ranks_by_the_time_the_aged_size_reaches_zero(
    specs: list[tuple[float, int, int, int]], factor: float, rate: float
) -> None:
    """Aged size s - r_p * wait falls at the class's rate; the request whose aged size reaches zero first goes
    first, i.e. by arrival + s / r_p with r_p = rate * factor^-p (ties by arrival)."""
    reqs = make(specs)
    out = drain(gimbal(aging_rate=rate, priority_factor=factor), reqs, now=200.0)
    zero = [r.arrival + r.uncached_prompt / (rate * factor ** (-r.priority)) for r in out]
    assert all(a <= b * (1 + 1e-12) + 1e-9 for a, b in zip(zero, zero[1:], strict=False))
    assert sorted(r.rid for r in out) == list(range(len(reqs)))


@given(specs=st.lists(REQ, max_size=60), factor=st.floats(1.0, 10.0))
@settings(max_examples=40, deadline=None)
def test_one_priority_class_is_sjf_aging(specs: list[tuple[float, int, int, int]], factor: float) -> None:
    """Priority 0 ages at `aging_rate`: without priorities the order is exactly sjf-aging's."""
    reqs = make([(a, n, 0, c) for a, n, _, c in specs])
    got = [r.rid for r in drain(gimbal(aging_rate=30.0, priority_factor=factor), reqs, 200.0)]
    want = [r.rid for r in drain(REQUEST_POLICIES.create("sjf-aging", {"aging_rate": 30.0}), reqs, 200.0)]
    assert got == want


def test_higher_priority_goes_first_at_equal_size_and_shorter_first_within_a_class() -> None:
    a, b, c = (Request(rid=i, arrival=0.0, prompt_len=n, output_len=1, priority=p)
               for i, (n, p) in enumerate([(400, 0), (400, -1), (300, 0)]))
    assert [r.rid for r in drain(gimbal(), [a, b, c], 0.0)] == [1, 2, 0]


# -- the per-class starvation bound ----------------------------------------------------------------------
@given(
    x_size=st.integers(1, 8000),
    x_prio=st.integers(-2, 2),
    backlog=st.lists(st.tuples(st.integers(1, 8000), st.integers(-2, 2)), max_size=20),
    stream=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 64), st.integers(-3, 2)), min_size=1, max_size=400),
    factor=st.floats(1.0, 8.0),
    rate=st.floats(20.0, 2000.0),
)
@settings(max_examples=120, deadline=None)
def test_starvation_bound_per_class_under_adversarial_short_jobs(
    x_size: int,
    x_prio: int,
    backlog: list[tuple[int, int]],
    stream: list[tuple[int, int, int]],
    factor: float,
    rate: float,
) -> None:
    """Request x (class p, size s) amid a backlog, then a stream of short jobs of every class (up to 3
    arrivals per admission, so overload too), one admission per tick. The bound: nobody arriving W_p(s) =
    s / r_p or later after x is admitted before it, and x is admitted within Q + A + 1 admissions (Q queued
    when it arrived, A arrivals within W_p(s))."""
    dt = 0.01
    pol = gimbal(aging_rate=rate, priority_factor=factor)
    t, rid = 0.0, 0
    for size, prio in backlog:
        pol.push(Request(rid=rid, arrival=t, prompt_len=size, output_len=1, priority=prio), t)
        rid += 1
    x = Request(rid=rid, arrival=t, prompt_len=x_size, output_len=1, priority=x_prio)
    pol.push(x, t)
    rid += 1
    window = pol.overtake_window_s(x)
    assert window == pytest.approx(x_size / (rate * factor ** (-x_prio)))
    queued, in_window, admissions = len(backlog), 0, 0
    k = 0
    while True:
        if k < len(stream):  # then the stream repeats its last tick for ever: the adversary never stops
            n, size, prio = stream[k]
        k += 1
        for _ in range(n):
            pol.push(Request(rid=rid, arrival=t, prompt_len=size, output_len=1, priority=prio), t)
            in_window += t - x.arrival < window
            rid += 1
        got = pol.pop(t)
        assert got is not None
        admissions += 1
        if got is x:
            break
        assert got.arrival < x.arrival + window, "overtaken by a request arriving after the window"
        assert admissions <= queued + in_window + 1
        t += dt
    assert admissions <= queued + in_window + 1
    # In time: x waits at most its window plus one tick per request ranked before it that was there by then.
    assert t - x.arrival <= window + (queued + in_window) * dt + 1e-9


def test_plain_sjf_breaks_the_bound_that_gimbal_keeps() -> None:
    """The same adversary against plain SJF starves the long request (the bound above is not vacuous)."""
    for name, admitted in (("sjf", False), ("gimbal", True)):
        pol = REQUEST_POLICIES.create(name)
        x = Request(rid=0, arrival=0.0, prompt_len=4000, output_len=1, priority=1)
        pol.push(x, 0.0)
        t, seen = 0.0, False
        for i in range(1, 40_000):
            t += 0.01
            pol.push(Request(rid=i, arrival=t, prompt_len=10, output_len=1, priority=-2), t)
            if pol.pop(t) is x:
                seen = True
                break
        assert seen is admitted
        if admitted:  # class 1 ages at 12.5 tokens/s: W = 320 s
            assert t <= 4000 / 12.5 + 0.02


# -- the engine's waiting queue --------------------------------------------------------------------------
def _workload(seed: int, n: int = 600, rate: float = 2.0) -> list[Request]:
    """`mixed`-like: 80% short (64-512), 20% long (2048-8192) prompts; 25% of requests at priority -1."""
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(1.0 / rate, n))
    long = rng.random(n) < 0.2
    prompt = np.where(long, rng.integers(2048, 8192, n), rng.integers(64, 512, n))
    out = np.where(long, rng.integers(256, 1024, n), rng.integers(64, 256, n))
    prio = np.where(rng.random(n) < 0.25, -1, 0)
    return [
        Request(rid=i, arrival=float(t[i]), prompt_len=int(prompt[i]), output_len=int(out[i]),
                cls="long" if long[i] else "short", priority=int(prio[i]))
        for i in range(n)
    ]


def _run_engine(policy: str, seed: int) -> list[Request]:
    reqs = _workload(seed)
    cfg = SimConfig(model="llama-2-13b", gpu="a100-80g", request_policy=policy, seed=seed)
    simulate(cfg, requests=reqs)
    assert all(r.finish >= 0 for r in reqs)  # nobody starves
    return reqs


def _mean_ttft(reqs: list[Request], keep) -> float:  # noqa: ANN001
    return float(np.mean([r.first_token - r.arrival for r in reqs if keep(r)]))


def test_engine_queue_high_priority_gains_while_shorts_keep_the_sjf_gain() -> None:
    """In the simulated engine (Llama-2-13B, one A100, overloaded at this rate): high-priority requests get
    a lower mean TTFT than under sjf-aging, and short requests keep a large gain over FCFS."""
    runs = {p: _run_engine(p, seed=3) for p in ("fcfs", "sjf-aging", "gimbal")}
    hi = {p: _mean_ttft(r, lambda q: q.priority < 0) for p, r in runs.items()}
    short = {p: _mean_ttft(r, lambda q: q.cls == "short") for p, r in runs.items()}
    assert hi["gimbal"] < 0.8 * hi["sjf-aging"]
    assert short["gimbal"] < 0.5 * short["fcfs"]


# -- the gateway's admission queue -----------------------------------------------------------------------
def _disp(cap: int = 1) -> Dispatcher:
    d = Dispatcher(REQUEST_POLICIES.create("gimbal"), ROUTERS.create("round-robin"), cap, 10_000,
                   lambda: CircuitBreaker(2, 1.0))
    d.add_backend("http://b0", 0.0)
    return d


def test_gateway_admission_queue_orders_by_class_aged_size() -> None:
    """Requests queued at the gateway (one backend slot) are dispatched shortest-first per class: a
    high-priority prompt ranks like one `priority_factor` times shorter."""
    d = _disp()
    specs = [(400, 0), (400, -1), (300, 0), (1500, -1), (100, 1)]  # (prompt, priority)
    reqs = [Request(rid=i, arrival=0.0, prompt_len=n, output_len=1, priority=p) for i, (n, p) in enumerate(specs)]
    for r in reqs:
        assert d.submit(r, 0.0)
    order = []
    for k in range(len(reqs)):
        (got, i), = d.dispatch(float(k))
        order.append(got.rid)
        d.finish(got, i, float(k) + 0.5, ok=True)
    # keys: 400/50=8, 400/200=2, 300/50=6, 1500/200=7.5, 100/12.5=8 (tie with rid 0: arrival, then rid)
    assert order == [1, 2, 3, 0, 4]


def test_gateway_admission_queue_keeps_the_bound_under_a_high_priority_flood() -> None:
    """A low-priority long request at the gateway under a flood of high-priority short ones (two arrivals
    per dispatch slot, so the queue grows): only arrivals within its window W_p(s) overtake it, and it is
    dispatched within A + 1 slots, A those arrivals (here about 2 W_p(s): twice its window)."""
    d = _disp()
    pol: Gimbal = d.policy  # type: ignore[assignment]
    x = Request(rid=0, arrival=0.0, prompt_len=2000, output_len=1, priority=1)
    d.submit(x, 0.0)
    window = pol.overtake_window_s(x)
    t, rid, slots, in_window, done = 0.0, 1, 0, 0, False
    while not done and t < 4 * window:
        for _ in range(2):
            d.submit(Request(rid=rid, arrival=t, prompt_len=20, output_len=1, priority=-1), t)
            in_window += t < window
            rid += 1
        for got, i in d.dispatch(t):
            slots += 1
            done = got is x
            assert done or got.arrival < window
            d.finish(got, i, t, ok=True)
        t += 0.05
    assert done and slots <= in_window + 1


def test_gateway_reads_priority_from_the_body() -> None:
    body = b'{"model": "m", "prompt": "hello", "priority": -2}'
    req = build_request(parse_body(body, COMPLETIONS), 1, 0.0, 16, None)
    assert req.priority == -2
    assert build_request(parse_body(b'{"prompt": "x"}', COMPLETIONS), 2, 0.0, 16, None).priority == 0
    for bad in (b'{"prompt": "x", "priority": "high"}', b'{"prompt": "x", "priority": 1.5}',
                b'{"prompt": "x", "priority": true}'):
        with pytest.raises(BadRequest) as e:
            parse_body(bad, COMPLETIONS)
        assert e.value.param == "priority"
