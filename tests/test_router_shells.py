"""The same router in both shells: the gateway's outstanding-prefill account across scrapes (issue 13, defect
1), the simulator's scraped snapshots holding only what vLLM's /metrics exports, identical decisions in both
shells when timing is equal, and LMetric's stale threshold derived from the scrape interval (defect 4)."""

from __future__ import annotations

from typing import Any

import pytest

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.gateway.dispatcher import Dispatcher
from llmsched.gateway.scrape import parse_vllm_metrics, snapshot_from_metrics
from llmsched.policies.instance import ROUTERS
from llmsched.policies.request import REQUEST_POLICIES
from llmsched.sim.config import SimConfig
from llmsched.sim.run import build_cluster, load_requests
from llmsched.workload.spec import WorkloadSpec


def vllm_metrics_text(s: InstanceSnapshot) -> str:
    """What a vLLM engine in the state `s` answers on /metrics (the series the gateway reads)."""
    lab = 'engine="0",model_name="m"'
    return (
        f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{{{lab}}} {s.num_running}\n"
        f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{{{lab}}} {s.num_waiting}\n"
        f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{{{lab}}} {s.kv_usage!r}\n"
        f"# TYPE vllm:prefix_cache_queries counter\nvllm:prefix_cache_queries_total{{{lab}}} {s.prefix_queries}\n"
        f"# TYPE vllm:prefix_cache_hits counter\nvllm:prefix_cache_hits_total{{{lab}}} {s.prefix_hits}\n"
        f"# TYPE vllm:cache_config_info gauge\n"
        f'vllm:cache_config_info{{block_size="16",num_gpu_blocks="{s.num_total_blocks}"}} 1.0\n'
    )


def _dispatcher(router: str, n: int, **params: Any) -> Dispatcher:
    d = Dispatcher(REQUEST_POLICIES.create("fcfs"), ROUTERS.create(router, params), 1 << 20, 1 << 20)
    for k in range(n):
        d.add_backend(f"http://b{k}", 0.0)
    return d


def _scrape(d: Dispatcher, i: int, running: int, waiting: int, now: float) -> None:
    snap = InstanceSnapshot(i, now, running, waiting, 0.1, 900, 1000, None)
    d.scraped(i, snapshot_from_metrics(parse_vllm_metrics(vllm_metrics_text(snap)), i, now), now)


def _send(d: Dispatcher, rid: int, prompt: int, now: float) -> tuple[Request, int]:
    req = Request(rid=rid, arrival=now, prompt_len=prompt, output_len=50)
    assert d.submit(req, now)
    [(r, i)] = d.dispatch(now)
    return r, i


@pytest.mark.parametrize("router", ["lmetric", "gimbal"])
def test_gateway_keeps_outstanding_prefill_across_scrapes(router: str) -> None:
    """20,000 prompt tokens dispatched and not yet prefilled still count after a scrape (vLLM exports no such
    gauge): the next request goes to the instance without them, until their first token frees them."""
    d = _dispatcher(router, 2)
    big, i0 = _send(d, 1, 20_000, 0.0)
    other = 1 - i0
    small = [_send(d, 2 + k, 100, 0.0) for k in range(2)]
    assert all(i == other for _, i in small)  # the 20k prefill is charged at dispatch
    for k, run in ((i0, 1), (other, 2)):  # a scrape sees the requests, not their prefill work
        _scrape(d, k, run, 0, 0.1)
    _, i = _send(d, 10, 500, 0.2)
    assert i == other, "the outstanding 20k-token prefill was forgotten at the scrape"
    d.first_token(big, i0, 0.3)  # its prefill is done: the account is released
    for k, run in ((i0, 1), (other, 3)):
        _scrape(d, k, run, 0, 0.4)
    _, i = _send(d, 11, 500, 0.5)
    assert i == i0


def test_simulator_scrapes_export_only_what_vllm_does() -> None:
    """With a metrics interval the simulator's snapshots carry no pending-prefill gauge (vLLM exports none);
    live snapshots (interval 0) do."""
    cfg = SimConfig(workload=WorkloadSpec(kind="synthetic", name="chat", num_requests=50, rate=20.0),
                    instances=2, router="lmetric", metrics_interval_s=0.05)
    cluster = build_cluster(cfg)
    cluster.run(load_requests(cfg))
    assert all(s.pending_prefill_tokens is None for s in cluster.snapshot_table)
    live = build_cluster(cfg.model_copy(update={"metrics_interval_s": 0.0}))
    assert all(s.pending_prefill_tokens is not None for s in live.snapshots(0.0))


def _record(cluster: Any) -> list[tuple]:
    """Log every call the simulator makes on its router, in order."""
    router = cluster.router
    log: list[tuple] = []
    route, snaps, first, fin = router.route, router.on_snapshots, router.on_first_token, router.on_finish

    def on_snapshots(s: Any, now: float) -> None:
        log.append(("scrape", now, [x for x in s]))
        snaps(s, now)

    def rt(req: Request, s: Any, now: float) -> int:
        i = route(req, s, now)
        log.append(("route", now, req, i))
        return i

    def on_first(req: Request, i: int, now: float) -> None:
        log.append(("first", now, req, i))
        first(req, i, now)

    def on_finish(req: Request, i: int, now: float) -> None:
        log.append(("finish", now, req, i))
        fin(req, i, now)

    router.route, router.on_snapshots, router.on_first_token, router.on_finish = rt, on_snapshots, on_first, on_finish
    return log


@pytest.mark.parametrize("router", ["lmetric", "gimbal", "dynamo-cost"])
def test_same_decisions_in_simulator_and_gateway(router: str) -> None:
    """One workload, both shells: the simulator with a 50 ms metrics interval, and the gateway's dispatcher
    fed the same scrapes as vLLM /metrics text at the same times, the same arrivals, first tokens and
    finishes. Every routing decision must agree."""
    cfg = SimConfig(workload=WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=400, rate=60.0),
                    instances=4, router=router, metrics_interval_s=0.05, seed=3)
    cluster = build_cluster(cfg)
    log = _record(cluster)
    log.append(("scrape", 0.0, cluster.snapshots(0.0)))  # the gateway scrapes at start; the simulator's t=0 rows
    cluster.run(load_requests(cfg))
    routes = [e for e in log if e[0] == "route"]
    assert len(routes) == 400 and sum(e[0] == "scrape" for e in log) > 20
    d = _dispatcher(router, 4, **cluster.router.get_params())
    got = []
    for ev in log:
        kind, now = ev[0], ev[1]
        if kind == "scrape":
            for s in ev[2]:
                text = vllm_metrics_text(s)
                d.scraped(s.instance, snapshot_from_metrics(parse_vllm_metrics(text), s.instance, now), now)
        elif kind == "route":
            assert d.submit(ev[2], now)
            [(_, i)] = d.dispatch(now)
            got.append(i)
        elif kind == "first":
            d.first_token(ev[2], ev[3], now)
        else:
            d.finish(ev[2], ev[3], now, ok=True)
    want = [e[3] for e in routes]
    diff = sum(a != b for a, b in zip(got, want, strict=True))
    assert diff == 0, f"{diff} of {len(want)} decisions differ between the shells"
    assert len(set(want)) == 4  # the workload exercises the choice


def test_index_sized_by_the_first_scrape_that_names_the_block_count() -> None:
    """A gateway may route before its first scrape (no block count yet): the prefix index must not be built
    with a capacity of one block and keep it; it takes the engines' count once a scrape names it."""
    from llmsched.core.hashing import chain

    d = _dispatcher("lmetric", 2)
    for k in range(3):  # before any scrape: three 40-block prompts on one chain family
        blocks = chain([("p", k, b) for b in range(40)])
        req = Request(rid=k, arrival=0.0, prompt_len=40 * 16, output_len=5, block_hashes=blocks)
        assert d.submit(req, 0.0)
        d.dispatch(0.0)
    idx = d.router.index_
    assert sum(idx.blocks(i) for i in range(2)) == 3 * 10  # every 4th of 40 blocks, none evicted
    _scrape(d, 0, 0, 0, 0.1)  # num_gpu_blocks 1000 -> 250 indexed blocks per instance
    assert idx.capacity_ == [250, 250]


def _capped_gateway() -> tuple[Dispatcher, Any]:
    """Two backends, one request in flight each: the second request of a prefix goes to the other backend."""
    from llmsched.gateway.breaker import CircuitBreaker

    router = ROUTERS.create("prefix", {"index_stride": 1})
    d = Dispatcher(REQUEST_POLICIES.create("fcfs"), router, 1, 16, lambda: CircuitBreaker(2, 1.0))
    for k in range(2):
        d.add_backend(f"http://b{k}", 0.0)
    return d, router


def _prefix_request(rid: int, t: float) -> Request:
    from llmsched.core.hashing import chain

    return Request(rid=rid, arrival=t, prompt_len=40 * 16, output_len=5, block_hashes=chain(range(40)))


def test_a_backend_that_frees_a_slot_keeps_its_prefix_index() -> None:
    """At its in-flight cap a backend is not a candidate, but its engine did not restart: when it frees a slot
    the router must not forget what it holds (it did: every completion of a saturated gateway wiped the index)."""
    d, router = _capped_gateway()
    a = _prefix_request(1, 0.0)
    d.submit(a, 0.0)
    [(_, ia)] = d.dispatch(0.0)
    b = _prefix_request(2, 0.1)
    d.submit(b, 0.1)
    [(_, ib)] = d.dispatch(0.1)
    assert (ia, ib) == (0, 1)  # backend 0 at its cap
    d.finish(a, ia, 0.2, ok=True)
    d.finish(b, ib, 0.25, ok=True)
    d.submit(_prefix_request(3, 0.3), 0.3)
    d.dispatch(0.3)
    assert router.decisions["index-reset"] == 0
    assert router.index_.evicted_ == 0
    assert router.index_.match(_prefix_request(4, 0.4).block_hashes) == [40, 40]


def test_a_backend_back_from_an_open_breaker_is_forgotten() -> None:
    """Down (the breaker opened on failures) and back: the engine may have restarted with an empty cache."""
    d, router = _capped_gateway()
    for t in (0.0, 0.1):  # two failures on backend 0 open its breaker (threshold 2)
        r = _prefix_request(int(t * 10) + 1, t)
        d.submit(r, t)
        [(_, i)] = d.dispatch(t)
        assert i == 0
        d.finish(r, i, t + 0.01, ok=False)
    r = _prefix_request(5, 0.2)
    d.submit(r, 0.2)
    [(_, i)] = d.dispatch(0.2)
    assert i == 1 and router.decisions["index-reset"] == 0  # 0 is down: not a candidate, not yet forgotten
    d.finish(r, i, 0.3, ok=True)
    r = _prefix_request(6, 2.0)  # past the breaker's 1 s cooldown: backend 0 is up again (half open)
    d.submit(r, 2.0)
    d.dispatch(2.0)
    assert router.decisions["index-reset"] == 1
