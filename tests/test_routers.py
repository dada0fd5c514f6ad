"""Every router's defining property, on constructed cluster states (no simulator)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.core.hashing import chain
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance import ROUTERS

BS = 16


def snap(i: int, running: int = 0, waiting: int = 0, kv: float = 0.1, pending: int = 0, t: float = 0.0,
         healthy: bool = True, total: int = 10_000) -> InstanceSnapshot:
    return InstanceSnapshot(
        instance=i, time=t, num_running=running, num_waiting=waiting, kv_usage=kv,
        num_free_blocks=int(total * (1 - kv)), num_total_blocks=total, pending_prefill_tokens=pending,
        healthy=healthy,
    )


_rid = iter(range(10**9))


def req(prompt_blocks: list[int] | None = None, prompt_len: int | None = None, session: str | None = None,
        t: float = 0.0) -> Request:
    hashes = chain(prompt_blocks) if prompt_blocks is not None else None
    n = prompt_len if prompt_len is not None else (len(prompt_blocks) * BS + 5 if prompt_blocks else 100)
    return Request(rid=next(_rid), arrival=t, prompt_len=n, output_len=10, block_hashes=hashes, session=session)


def warm(router, instance: int, blocks: list[int], snaps) -> None:
    """Put a prefix on `instance` in the router's index by dispatching (and finishing) a request there."""
    r = req(blocks)
    router.route(r, snaps, 0.0)
    router.on_dispatch(r, instance, 0.0)
    router.on_finish(r, instance, 0.0)


ALL = ROUTERS.names()


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(
        st.tuples(st.booleans(), st.integers(0, 50), st.integers(0, 50), st.floats(0, 1), st.integers(0, 5000)),
        min_size=1, max_size=9,
    ),
    blocks=st.lists(st.integers(0, 3), max_size=6),
    session=st.one_of(st.none(), st.sampled_from(["a", "b", "c"])),
)
def test_never_picks_unhealthy_while_a_healthy_one_exists(name, data, blocks, session):
    router = ROUTERS.create(name)
    snaps = [snap(i, r, w, kv, p, healthy=h) for i, (h, r, w, kv, p) in enumerate(data)]
    for k in range(4):
        r = req(blocks or None, session=session)
        i = router.route(r, snaps, float(k))
        assert 0 <= i < len(snaps)
        if any(s.healthy for s in snaps):
            assert snaps[i].healthy
        router.on_dispatch(r, i, float(k))
    assert sum(router.decisions.values()) >= 4  # one reason per decision, plus guard counters


@pytest.mark.parametrize("name", ALL)
def test_registry_params_roundtrip(name):
    router = ROUTERS.create(name)
    router.set_params(**router.get_params())
    with pytest.raises(ValueError, match=name):
        ROUTERS.create(name, {"no_such_param": 1})


def test_least_requests_and_rotation():
    router = ROUTERS.create("least-requests")
    snaps = [snap(i) for i in range(3)]
    picks = []
    for _ in range(6):
        r = req()
        i = router.route(r, snaps, 0.0)
        router.on_dispatch(r, i, 0.0)
        picks.append(i)
    assert sorted(picks) == [0, 0, 1, 1, 2, 2]
    router.on_finish(req(), 1, 0.0)
    assert router.route(req(), snaps, 0.0) == 1


def test_least_kv_reads_the_snapshot():
    router = ROUTERS.create("least-kv")
    assert router.route(req(), [snap(0, kv=0.5), snap(1, kv=0.2), snap(2, kv=0.9)], 0.0) == 1


def test_random_is_seeded():
    snaps = [snap(i) for i in range(8)]
    a = [ROUTERS.create("random", {"seed": 3}) for _ in range(2)]
    seq = [[r.route(req(), snaps, 0.0) for _ in range(50)] for r in a]
    assert seq[0] == seq[1]
    assert len(set(seq[0])) > 4


def test_power_of_two_picks_the_less_loaded_of_its_two():
    n, seed = 8, 5
    router = ROUTERS.create("power-of-two", {"seed": seed})
    loads = [7, 3, 9, 0, 5, 5, 2, 8]
    snaps = [snap(i, running=loads[i]) for i in range(n)]
    rng = np.random.default_rng(seed)
    for _ in range(40):
        a, b = rng.choice(n, size=2, replace=False).tolist()
        i = router.route(req(), snaps, 0.0)
        assert i in (a, b)
        assert loads[i] == min(loads[a], loads[b])


def test_session_is_sticky_and_moves_only_the_lost_instance_sessions():
    router = ROUTERS.create("session")
    snaps = [snap(i) for i in range(6)]
    sessions = [f"user-{k}" for k in range(300)]
    home = {}
    for s in sessions:
        home[s] = router.route(req(session=s), snaps, 0.0)
        router.on_dispatch(req(session=s), home[s], 0.0)
    assert len(set(home.values())) == 6  # spreads
    for k, s in enumerate(sessions * 2):  # sticky whatever the load
        loaded = [snap(i, running=(k * 7 + i) % 40) for i in range(6)]
        assert router.route(req(session=s), loaded, 0.0) == home[s]
    down = [snap(i, healthy=i != 2) for i in range(6)]
    for s in sessions:
        i = router.route(req(session=s), down, 0.0)
        assert i != 2
        if home[s] != 2:
            assert i == home[s]
    # A fresh router agrees: the ring is a function of the members only.
    assert all(ROUTERS.create("session").route(req(session=s), snaps, 0.0) == home[s] for s in sessions)


def test_prefix_finds_the_longest_match_ignoring_load():
    router = ROUTERS.create("prefix", {"index_stride": 1})
    snaps = [snap(i) for i in range(4)]
    warm(router, 0, [1, 2], snaps)
    warm(router, 1, [1, 2, 3, 4, 5], snaps)
    warm(router, 2, [1, 2, 3], snaps)
    busy = [snap(0), snap(1, running=100, waiting=50), snap(2), snap(3)]
    assert router.route(req([1, 2, 3, 4, 9]), busy, 1.0) == 1
    assert router.route(req([1, 2, 3, 7]), busy, 1.0) in (1, 2)
    assert router.route(req([1, 2, 8]), busy, 1.0) in (0, 1, 2)
    assert router.route(req([8]), busy, 1.0) in (0, 1, 2, 3)


def _sglang_state(loads: list[int]):
    router = ROUTERS.create("sglang-cache-aware", {"index_stride": 1})
    snaps = [snap(i) for i in range(len(loads))]
    warm(router, 0, list(range(10)), snaps)  # instance 0 holds 10 blocks of the prefix
    for i, n in enumerate(loads):
        for _ in range(n):
            router.on_dispatch(req(), i, 0.0)
    return router, snaps


@pytest.mark.parametrize(
    ("loads", "prompt_blocks", "want", "reason"),
    [
        ([100, 10, 20], 10, 1, "imbalanced"),  # 100 - 10 > 64 and 100 > 15: least load
        ([74, 10, 20], 10, 0, "cache-hit"),  # max - min = 64 is not > 64
        ([30, 10, 20], 10, 0, "cache-hit"),  # balanced, match rate ~1
        ([30, 10, 20], 40, 1, "low-match"),  # match 10 / 40 blocks = 0.25 <= 0.3: least load
        ([30, 10, 20], 30, 0, "cache-hit"),  # 10 / 30 = 0.33 > 0.3
    ],
)
def test_sglang_thresholds(loads, prompt_blocks, want, reason):
    router, snaps = _sglang_state(loads)
    router.decisions.clear()
    r = req(list(range(10)) + [99] * (prompt_blocks - 10), prompt_len=prompt_blocks * BS)
    assert router.route(r, snaps, 1.0) == want
    assert router.decisions[reason] == 1


def test_llmd_weighted_scores():
    router = ROUTERS.create("llmd-weighted", {"index_stride": 1})
    snaps = [snap(0, waiting=10, kv=0.2), snap(1, waiting=0, kv=0.2), snap(2, waiting=0, kv=0.9)]
    assert router.route(req([5, 6]), snaps, 0.0) == 1
    warm(router, 0, [5, 6], snaps)
    # prefix 3 x 1.0 outweighs queue 2 x 1.0 at equal KV
    assert router.route(req([5, 6]), snaps, 0.0) == 0
    w = ROUTERS.create("llmd-weighted", {"prefix_weight": 1.0, "index_stride": 1})
    warm(w, 0, [5, 6], snaps)
    assert w.route(req([5, 6]), snaps, 0.0) == 1


def test_dynamo_cost_argmin():
    router = ROUTERS.create("dynamo-cost")
    snaps = [snap(0, kv=0.5, total=1000), snap(1, kv=0.1, total=1000, pending=16 * 1000), snap(2, kv=0.3, total=1000)]
    # costs in blocks: 0: 7 + 500; 1: 7 + 1000 + 100; 2: 7 + 300
    assert router.route(req(prompt_len=100), snaps, 0.0) == 2
    warm(router, 0, list(range(40)), snaps)
    # 40 cached blocks make instance 0's prefill 1 block instead of 41: 1 + 500 vs 41 + 300
    assert router.route(req(list(range(40))), snaps, 0.0) == 2
    hot = ROUTERS.create("dynamo-cost", {"prefill_weight": 10.0})
    warm(hot, 0, list(range(40)), snaps)
    assert hot.route(req(list(range(40))), snaps, 0.0) == 0


def test_linear_extremes():
    snaps = [snap(0, running=10), snap(1, running=0)]
    only_p = ROUTERS.create("linear", {"w_batch": 0.0})
    warm(only_p, 0, list(range(20)), snaps)
    assert only_p.route(req(list(range(20))), snaps, 0.0) == 0
    only_b = ROUTERS.create("linear", {"w_prefill": 0.0, "w_batch": 1.0})
    warm(only_b, 0, list(range(20)), snaps)
    assert only_b.route(req(list(range(20))), snaps, 0.0) == 1


def test_gimbal_sticks_until_cost_gap_is_large():
    router = ROUTERS.create("gimbal", {"stick_abs": 1000, "stick_rel": 0.0})
    snaps = [snap(0), snap(1)]
    r = req(prompt_len=500, session="u")
    assert router.route(r, snaps, 0.0) == 0
    router.on_dispatch(r, 0, 0.0)
    # Instance 0 now has 500 more pending tokens than 1: within 1000, stay.
    assert router.route(req(prompt_len=500, session="u"), [snap(0, pending=800), snap(1)], 0.1) == 0
    assert router.decisions["sticky"] == 1
    # Far beyond: move, and count it.
    assert router.route(req(prompt_len=500, session="u"), [snap(0, pending=5000), snap(1)], 0.2) == 1
    assert router.decisions["unstick"] == 1
    # The KV penalty steers away from a nearly full instance.
    assert router.route(req(prompt_len=500), [snap(0, kv=0.99), snap(1, pending=3000)], 0.3) == 1


def test_stale_snapshots_are_corrected_by_own_dispatches():
    router = ROUTERS.create("power-of-two")
    snaps = [snap(0, running=2), snap(1, running=2)]
    router.sync(snaps, 0.0)
    for _ in range(3):
        router.on_dispatch(req(), 0, 0.1)
    assert router.queue_est(snaps[0]) == 5 and router.queue_est(snaps[1]) == 2
    router.on_finish(req(), 0, 0.2)
    assert router.queue_est(snaps[0]) == 4
    fresh = [snap(0, running=4, t=1.0), snap(1, running=2, t=1.0)]
    router.on_snapshots(fresh, 1.0)  # the scrape saw them: no double count
    assert router.queue_est(fresh[0]) == 4


def test_route_without_dispatch_changes_no_decision():
    # A shell may route, fail to dispatch, and route again: same answer for deterministic routers.
    for name in ["least-requests", "prefix", "sglang-cache-aware", "llmd-weighted", "dynamo-cost", "linear",
                 "gimbal", "least-kv"]:
        router = ROUTERS.create(name)
        snaps = [snap(0, running=3), snap(1, running=1), snap(2, running=2)]
        warm(router, 2, [1, 2, 3], snaps)
        r = req([1, 2, 3, 4])
        first = router.route(r, snaps, 1.0)
        if name != "least-requests":  # it rotates its tie-break on purpose
            assert router.route(r, snaps, 1.0) == first, name


def test_index_forgets_an_instance_that_comes_back_from_down():
    router = ROUTERS.create("prefix", {"index_stride": 1})
    up = [snap(0), snap(1)]
    router.sync(up, 0.0)
    warm(router, 1, [1, 2, 3], up)
    assert router.route(req([1, 2, 3]), up, 0.5) == 1
    router.sync([snap(0, t=1.0), snap(1, t=1.0, healthy=False)], 1.0)
    back = [snap(0, t=2.0), snap(1, t=2.0)]
    assert router.route(req([1, 2, 3], prompt_len=60), back, 2.0) == 0  # index forgot; tie to lowest index
    assert router.decisions["index-reset"] == 1
