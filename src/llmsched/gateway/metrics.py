"""The gateway's own Prometheus metrics, measured where the client sees them.

One `CollectorRegistry` per gateway (not the global one), so tests can run several gateways in one process.
Per-backend, per-pool and per-decision series are read at scrape time from the model pools and their routers
(`router.decisions`), so they never go stale and removed backends disappear. Series per model carry the label
`model`: the pool's model id (`*` for the unnamed pool of backends whose models are not known).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmsched.gateway.pools import Pools

# Latency buckets from 1 ms to 10 min: gateway queueing is sub-ms when idle, long-prompt TTFTs reach minutes.
_LAT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class _Live(Collector):
    def __init__(self, pools: Pools) -> None:
        self.d = pools

    def collect(self) -> Iterator[Metric]:
        inflight = GaugeMetricFamily("llmsched_gateway_backend_in_flight", "requests dispatched and not finished",
                                     labels=["backend"])
        up = GaugeMetricFamily("llmsched_gateway_backend_up", "1 if the backend may take requests (breaker "
                               "not open, not draining)", labels=["backend", "state"])
        served = CounterMetricFamily("llmsched_gateway_backend_requests", "requests finished per backend",
                                     labels=["backend", "outcome"])
        models = GaugeMetricFamily("llmsched_gateway_backend_models", "1 per model id a backend serves (parent: "
                                   "the base model of a LoRA adapter, else empty)", labels=["backend", "model", "parent"])
        for b in self.d.live():
            inflight.add_metric([b.url], b.in_flight)
            up.add_metric([b.url, b.state], 1.0 if b.state == "closed" else 0.0)
            served.add_metric([b.url, "ok"], b.served)
            served.add_metric([b.url, "failed"], b.failed)
            for mid in sorted(b.models or ()):
                parent = b.cards.get(mid, {}).get("parent")
                models.add_metric([b.url, mid, parent if isinstance(parent, str) else ""], 1.0)
        yield inflight
        yield up
        yield served
        yield models
        q = GaugeMetricFamily("llmsched_gateway_queue_length", "requests waiting in a model pool's admission queue",
                              labels=["policy", "model"])
        served = self.d.served()
        for p in self.d.pools.values():
            if p.key is None or p.d.policy or p.d.in_flight or p.key in served:
                q.add_metric([p.policy_name, p.label], len(p.d.policy))
        yield q
        dec = CounterMetricFamily("llmsched_gateway_routing_decisions", "routing decisions by router and reason "
                                  "(model: the pool; adapter pools of a base model share one router)",
                                  labels=["policy", "reason", "model"])
        for label, name, router in self.d.routers():
            for reason, n in sorted(router.decisions.items()):
                dec.add_metric([name, reason, label], n)
        yield dec
        rej = CounterMetricFamily("llmsched_gateway_rejected", "requests refused with 429 (queue full)")
        rej.add_metric([], self.d.rejected)
        yield rej
        ret = CounterMetricFamily("llmsched_gateway_retries", "re-dispatches after a failure before first byte")
        ret.add_metric([], self.d.retried)
        yield ret


class GatewayMetrics:
    def __init__(self, pools: Pools) -> None:
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
        self.model_requests = Counter("llmsched_gateway_model_requests", "requests answered, by model pool and "
                                      "HTTP status", ["model", "status"], registry=r)
        self.model_ttft = Histogram("llmsched_gateway_model_ttft_seconds", "streams: arrival to first token, by "
                                    "model pool", ["model"], buckets=_LAT, registry=r)
        self.model_e2e = Histogram("llmsched_gateway_model_e2e_seconds", "arrival to last byte, by model pool",
                                   ["model"], buckets=_LAT, registry=r)
        self._by_model: dict[str, tuple[Histogram, Histogram]] = {}
        r.register(_Live(pools))

    def by_model(self, model: str, status: int, ttft: float | None, e2e: float | None) -> None:
        """One request of model pool `model` answered."""
        h = self._by_model.get(model)
        if h is None:
            h = self._by_model[model] = (self.model_ttft.labels(model), self.model_e2e.labels(model))
        self.model_requests.labels(model, str(status)).inc()
        if ttft is not None:
            h[0].observe(ttft)
        if e2e is not None:
            h[1].observe(e2e)

    def render(self) -> bytes:
        return generate_latest(self.registry)
