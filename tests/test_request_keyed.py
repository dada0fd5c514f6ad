"""Ordering properties of the static-key policies (fcfs, priority, sjf, sjf-aging, gimbal) and the max-wait guard."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.core.types import Request
from llmsched.policies.request import REQUEST_POLICIES

REQ = st.tuples(
    st.floats(0, 100, allow_nan=False),  # arrival
    st.integers(1, 8000),  # prompt length
    st.integers(-3, 3),  # priority
    st.integers(0, 1000),  # estimated cached tokens (clipped to the prompt)
)


def make(specs: list[tuple[float, int, int, int]]) -> list[Request]:
    return [
        Request(rid=i, arrival=a, prompt_len=n, output_len=10, priority=p, est_cached=min(c, n - 1))
        for i, (a, n, p, c) in enumerate(specs)
    ]


def drain(name: str, reqs: list[Request], now: float, **params: object) -> list[Request]:
    pol = REQUEST_POLICIES.create(name, params)
    for r in reqs:
        pol.push(r, now)
    out = []
    while (r := pol.peek(now)) is not None:
        assert pol.pop(now) is r
        out.append(r)
    assert len(pol) == 0 and not pol
    return out


EXPECTED = {
    "fcfs": lambda r: (r.arrival, r.rid),
    "priority": lambda r: (r.priority, r.arrival, r.rid),
    "sjf": lambda r: (r.prompt_len - r.est_cached, r.arrival, r.rid),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
@given(specs=st.lists(REQ, max_size=60))
@settings(max_examples=60, deadline=None)
def test_pops_in_key_order(name: str, specs: list[tuple[float, int, int, int]]) -> None:
    reqs = make(specs)
    assert drain(name, reqs, now=200.0) == sorted(reqs, key=EXPECTED[name])


@given(specs=st.lists(REQ, min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_sjf_pops_a_shortest_and_can_ignore_cache(specs: list[tuple[float, int, int, int]]) -> None:
    reqs = make(specs)
    pol = REQUEST_POLICIES.create("sjf", {"use_uncached": False})
    for r in reqs:
        pol.push(r, 0.0)
    assert pol.pop(0.0).prompt_len == min(r.prompt_len for r in reqs)  # type: ignore[union-attr]


@given(specs=st.lists(REQ, max_size=60), rate=st.floats(1.0, 1e5))
@settings(max_examples=60, deadline=None)
def test_sjf_aging_orders_by_effective_size(specs: list[tuple[float, int, int, int]], rate: float) -> None:
    reqs = make(specs)
    now = 200.0
    out = drain("sjf-aging", reqs, now, aging_rate=rate)
    eff = [r.uncached_prompt - rate * (now - r.arrival) for r in out]
    assert all(a <= b + 1e-6 * max(1.0, abs(b)) for a, b in zip(eff, eff[1:], strict=False))


@given(
    ops=st.lists(st.tuples(st.sampled_from(["push", "pop", "remove", "requeue"]), REQ), max_size=80),
    name=st.sampled_from(["fcfs", "priority", "sjf", "sjf-aging", "gimbal"]),
    guard=st.sampled_from([None, 5.0]),
)
@settings(max_examples=80, deadline=None)
def test_matches_a_sorted_list_model(ops: list, name: str, guard: float | None) -> None:
    """Interleaved push/pop/remove/requeue agree with a naive model (the guard only when it can fire)."""
    pol = REQUEST_POLICIES.create(name, {"max_wait_s": guard})
    probe = REQUEST_POLICIES.create(name)
    model: dict[int, Request] = {}
    popped: list[Request] = []
    now = 0.0
    for i, (op, spec) in enumerate(ops):
        now += 0.5
        if op == "push":
            r = make([spec])[0]
            r.rid, r.arrival = i, now
            pol.push(r, now)
            model[i] = r
        elif op == "pop":
            got = pol.pop(now)
            if not model:
                assert got is None
                continue
            assert got is not None
            overdue = [r for r in model.values() if guard is not None and now - r.arrival >= guard]
            if overdue:
                assert got is min(overdue, key=lambda r: (r.arrival, r.rid))
            else:
                assert got is min(model.values(), key=probe.key)  # type: ignore[attr-defined]
            del model[got.rid]
            popped.append(got)
        elif op == "remove" and model:
            victim = model.pop(next(iter(model)))
            assert pol.remove(victim)
            assert not pol.remove(victim)
        elif op == "requeue" and popped:
            r = popped.pop()
            pol.requeue(r, now)
            model[r.rid] = r
        assert len(pol) == len(model)


def test_requeue_restores_the_original_place() -> None:
    pol = REQUEST_POLICIES.create("sjf")
    a, b, c = make([(0.0, 100, 0, 0), (1.0, 200, 0, 0), (2.0, 300, 0, 0)])
    for r in (a, b, c):
        pol.push(r, 2.0)
    first = pol.pop(3.0)
    assert first is a
    a.est_cached = 99  # a later estimate must not move a preempted request
    pol.push(Request(rid=9, arrival=4.0, prompt_len=50, output_len=1), 4.0)
    pol.requeue(a, 5.0)
    assert [pol.pop(5.0).rid for _ in range(4)] == [9, 0, 1, 2]  # type: ignore[union-attr]


def test_remove_of_unknown_request_is_false() -> None:
    pol = REQUEST_POLICIES.create("fcfs")
    assert not pol.remove(Request(rid=1, arrival=0.0, prompt_len=1, output_len=1))


def test_bad_parameters_are_named() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        REQUEST_POLICIES.create("sjf", {"max_wait_s": -1})
    with pytest.raises(ValueError, match="aging_rate"):
        REQUEST_POLICIES.create("sjf-aging", {"aging_rate": 0})


def test_time_invariance_flag() -> None:
    assert REQUEST_POLICIES.create("sjf").time_invariant
    assert REQUEST_POLICIES.create("sjf-aging").time_invariant
    assert not REQUEST_POLICIES.create("sjf", {"max_wait_s": 1.0}).time_invariant


def serve(pol_name: str, horizon: float, dt: float = 0.1, **params: object) -> float | None:
    """One admission per tick `dt`; a long low-priority request at t=0, then one short request per tick.

    Returns when the long request was admitted, or None if it never was within the horizon.
    """
    pol = REQUEST_POLICIES.create(pol_name, params)
    pol.push(Request(rid=0, arrival=0.0, prompt_len=8000, output_len=1, priority=1), 0.0)
    t, rid = 0.0, 1
    while t < horizon:
        pol.push(Request(rid=rid, arrival=t, prompt_len=50, output_len=1), t)
        rid += 1
        t += dt
        if pol.pop(t).rid == 0:  # type: ignore[union-attr]
            return t
    return None


def test_sjf_starves_without_guard() -> None:
    assert serve("sjf", horizon=60.0) is None


@pytest.mark.parametrize("name", ["sjf", "priority", "sjf-aging"])
@pytest.mark.parametrize("max_wait", [0.5, 3.0, 20.0])
def test_max_wait_guard_bound(name: str, max_wait: float) -> None:
    """With capacity and no older backlog, the overdue request goes within one step of `max_wait_s`."""
    t = serve(name, horizon=60.0, dt=0.1, max_wait_s=max_wait)
    assert t is not None
    assert t <= max_wait + 0.1 + 1e-9
    if name != "sjf-aging":  # aging alone may already have made it first
        assert t >= max_wait - 1e-9


@given(rate=st.floats(10.0, 1e4))
@settings(max_examples=20, deadline=None)
def test_sjf_aging_every_request_is_eventually_first(rate: float) -> None:
    """The aging bound: the long request is overtaken only by arrivals within size/rate after it."""
    t = serve("sjf-aging", horizon=8000 / rate + 5.0, aging_rate=rate)
    assert t is not None
    # The last overtaking arrival comes before 8000/rate; it and the long one need one tick each.
    assert t <= 8000 / rate + 2 * 0.1 + 1e-6
    pol = REQUEST_POLICIES.create("sjf-aging", {"aging_rate": rate})
    assert pol.overtake_window_s(Request(rid=0, arrival=0.0, prompt_len=8000, output_len=1)) == 8000 / rate  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ["sjf", "priority", "sjf-aging", "fcfs"])
@given(share=st.floats(0.05, 1.0), max_wait=st.floats(0.1, 3.0))
@settings(max_examples=15, deadline=None)
def test_guard_share_bounds_admissions_under_overload(name: str, share: float, max_wait: float) -> None:
    """Two arrivals per admission (overload): the guard takes its share of admissions, oldest overdue first,
    so an overdue request with B older overdue ones is admitted within (B + 1) / share admissions."""
    pol = REQUEST_POLICIES.create(name, {"max_wait_s": max_wait, "guard_share": share})
    t, rid, guard_pops, overdue_pops = 0.0, 0, 0, 0
    waiting: dict[int, float] = {}  # rid -> arrival, in arrival order
    became_overdue: dict[int, tuple[int, int]] = {}  # rid -> (admission index, older overdue still waiting)
    for pops in range(200):
        for _ in range(2):
            size = 8000 if rid % 7 == 0 else 50
            pol.push(Request(rid=rid, arrival=t, prompt_len=size, output_len=1, priority=size // 8000), t)
            waiting[rid] = t
            rid += 1
        t += 0.05
        overdue = [r for r, a in itertools.takewhile(lambda x, t=t: t - x[1] >= max_wait, waiting.items())]
        for k, r in enumerate(overdue):
            became_overdue.setdefault(r, (pops, k))
        overdue_pops += bool(overdue)
        got = pol.pop(t)
        assert got is not None
        guard_pops += bool(overdue) and got.rid == overdue[0]
        if got.rid in became_overdue:
            start, older = became_overdue[got.rid]
            assert pops - start <= (older + 1) / share + 1
        del waiting[got.rid]
    assert guard_pops >= int(share * overdue_pops) - 1
