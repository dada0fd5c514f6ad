"""The gateway's own Prometheus metrics, measured where the client sees them.

One `CollectorRegistry` per gateway (not the global one), so tests can run several gateways in one process.
Per-backend and per-decision series are read at scrape time from the dispatcher and the router
(`router.decisions`), so they never go stale and removed backends disappear.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmsched.gateway.dispatcher import Dispatcher

# Latency buckets from 1 ms to 10 min: gateway queueing is sub-ms when idle, long-prompt TTFTs reach minutes.
_LAT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class _Live(Collector):
    def __init__(self, dispatcher: Dispatcher, router_name: str, policy_name: str) -> None:
        self.d = dispatcher
        self.router_name = router_name
        self.policy_name = policy_name

    def collect(self) -> Iterator[Metric]:
        inflight = GaugeMetricFamily("llmsched_gateway_backend_in_flight", "requests dispatched and not finished",
                                     labels=["backend"])
        up = GaugeMetricFamily("llmsched_gateway_backend_up", "1 if the backend may take requests (breaker "
                               "not open, not draining)", labels=["backend", "state"])
        served = CounterMetricFamily("llmsched_gateway_backend_requests", "requests finished per backend",
                                     labels=["backend", "outcome"])
        for b in self.d.live():
            inflight.add_metric([b.url], b.in_flight)
            up.add_metric([b.url, b.state], 1.0 if b.state == "closed" else 0.0)
            served.add_metric([b.url, "ok"], b.served)
            served.add_metric([b.url, "failed"], b.failed)
        yield inflight
        yield up
        yield served
        q = GaugeMetricFamily("llmsched_gateway_queue_length", "requests waiting in the admission queue",
                              labels=["policy"])
        q.add_metric([self.policy_name], self.d.queued)
        yield q
        dec = CounterMetricFamily("llmsched_gateway_routing_decisions", "routing decisions by router and reason",
                                  labels=["policy", "reason"])
        for reason, n in sorted(self.d.router.decisions.items()):
            dec.add_metric([self.router_name, reason], n)
        yield dec
        rej = CounterMetricFamily("llmsched_gateway_rejected", "requests refused with 429 (queue full)")
        rej.add_metric([], self.d.rejected)
        yield rej
        ret = CounterMetricFamily("llmsched_gateway_retries", "re-dispatches after a failure before first byte")
        ret.add_metric([], self.d.retried)
        yield ret


class GatewayMetrics:
    def __init__(self, dispatcher: Dispatcher, router_name: str, policy_name: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter("llmsched_gateway_requests", "requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.ttft = Histogram("llmsched_gateway_ttft_seconds", "arrival at the gateway to first response byte",
                              ["endpoint"], buckets=_LAT, registry=r)
        self.tpot = Histogram("llmsched_gateway_tpot_seconds", "mean time between streamed chunks after the first",
                              ["endpoint"], buckets=_TPOT, registry=r)
        self.e2e = Histogram("llmsched_gateway_e2e_seconds", "arrival to last byte", ["endpoint"], buckets=_LAT,
                             registry=r)
        self.queue = Histogram("llmsched_gateway_queue_time_seconds", "time in the admission queue",
                               buckets=_LAT, registry=r)
        r.register(_Live(dispatcher, router_name, policy_name))

    def render(self) -> bytes:
        return generate_latest(self.registry)
