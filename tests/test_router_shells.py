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
