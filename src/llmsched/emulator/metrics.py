"""vLLM's Prometheus metrics for one emulated engine, under vLLM's names and labels.

The engine loop only adds to plain Python numbers (`on_tokens` is one list append); a custom collector turns
them into metric families when `/metrics` is scraped, reading the gauges from `engine.snapshot`. That keeps
per-token accounting off the hot path: prometheus-client's own Histogram takes a lock per observation.
Each server has its own `CollectorRegistry`, so several emulators can live in one process (the gateway's
`--emulated N`). Times are in *emulated* seconds: what the engine would have measured on the modelled GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.emulator.stream import TokenStream

# vLLM v1's bucket boundaries (vllm/v1/metrics/loggers.py), so dashboards built for vLLM read these as-is.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0)  # fmt: skip

ITERATION_TOKENS_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


def request_tokens_buckets(max_model_len: int) -> tuple[float, ...]:
    """vLLM's 1-2-5 series up to the context window (`build_1_2_5_buckets`)."""
    out: list[float] = []
    e = 1
    while True:
        for m in (1, 2, 5):
            if m * e > max_model_len:
                return tuple(out)
            out.append(float(m * e))
        e *= 10


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class FoldedHistogram:
    """Observations buffered in a list and folded into bucket counts with numpy when read (or when large)."""

    __slots__ = ("bounds", "counts", "_sum", "_pending")

    FOLD_AT = 1 << 16

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # last: above every bound (+Inf only)
        self._sum = 0.0
        self._pending: list[float] = []

    def observe(self, v: float, n: int = 1) -> None:
        if n == 1:
            self._pending.append(v)
        else:
            self._pending.extend([v] * n)
        if len(self._pending) >= self.FOLD_AT:
            self.fold()

    def fold(self) -> None:
        if self._pending:
            a = np.asarray(self._pending, dtype=np.float64)
            self._pending.clear()
            # Prometheus buckets are "le": v falls in the first bucket whose bound is >= v.
            self.counts += np.bincount(
                np.searchsorted(self.bounds, a, side="left"), minlength=len(self.counts)
            )
            self._sum += float(a.sum())

    @property
    def total(self) -> float:
        """Sum of the observations."""
        self.fold()
        return self._sum

    @property
    def count(self) -> int:
        self.fold()
        return int(self.counts.sum())

    def buckets(self) -> list[tuple[str, float]]:
        self.fold()
        cum = np.cumsum(self.counts)
        out = [(repr(float(b)), float(c)) for b, c in zip(self.bounds, cum[:-1], strict=True)]
        out.append(("+Inf", float(cum[-1])))
        return out


class EmulatorMetrics:
    """Counts what the engine loop reports (`DriverObserver`) and exposes it as vLLM's metrics."""

    def __init__(
        self,
        model_name: str,
        snapshot: Callable[[], InstanceSnapshot],
        cache_config: dict[str, str],
        preemptions: Callable[[], int] = lambda: 0,
        max_model_len: int = 32768,
    ) -> None:
        self.model_name = model_name
        self._snapshot = snapshot
        self._preemptions = preemptions
        self.cache_config = cache_config
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.success: dict[str, int] = {"length": 0, "stop": 0, "abort": 0}
        self.ttft = FoldedHistogram(TTFT_BUCKETS)
        self.itl = FoldedHistogram(ITL_BUCKETS)
        self.e2e = FoldedHistogram(LATENCY_BUCKETS)
        self.queue = FoldedHistogram(LATENCY_BUCKETS)
        self.iteration_tokens = FoldedHistogram(ITERATION_TOKENS_BUCKETS)
        self.request_prompt = FoldedHistogram(request_tokens_buckets(max_model_len))
        self.request_generation = FoldedHistogram(request_tokens_buckets(max_model_len))
        self.request_tpot = FoldedHistogram(ITL_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # -- DriverObserver --------------------------------------------------------------------------------
    def on_first_tokens(self, reqs: list[Request], now: float) -> None:
        for r in reqs:
            self.ttft.observe(now - r.arrival)
            self.prompt_tokens += r.prompt_len

    def on_tokens(self, stream: TokenStream, n: int, now: float) -> None:
        self.generation_tokens += n
        if stream.generated > 0:  # the first token's latency is TTFT, not an inter-token gap
            self.itl.observe((now - stream.last_token_time) / n, n)
        elif n > 1:
            self.itl.observe((now - stream.req.first_token) / (n - 1), n - 1)

    def on_step(self, tokens: int, steps: int) -> None:
        """An iteration (or a run of `steps` identical ones) computed `tokens` tokens each (prompt + output)."""
        self.iteration_tokens.observe(tokens, steps)

    def on_finished(self, reqs: list[Request], now: float) -> None:
        for r in reqs:
            self.success["length"] += 1
            self.e2e.observe(now - r.arrival)
            self.request_prompt.observe(r.prompt_len)
            self.request_generation.observe(r.num_output)
            if r.num_output > 1:
                self.request_tpot.observe((now - r.first_token) / (r.num_output - 1))
            if r.first_scheduled >= 0:
                self.queue.observe(r.first_scheduled - r.arrival)

    def on_abort(self) -> None:
        self.success["abort"] += 1

    # -- exposition ------------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, m: EmulatorMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        m = self.m
        snap = m._snapshot()
        names = ["model_name", "engine"]
        lv = [m.model_name, "0"]

        def gauge(name: str, doc: str, v: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc, labels=names)
            g.add_metric(lv, v)
            return g

        def counter(name: str, doc: str, v: float) -> CounterMetricFamily:
            c = CounterMetricFamily(name, doc, labels=names)
            c.add_metric(lv, v)
            return c

        def hist(name: str, doc: str, h: FoldedHistogram) -> HistogramMetricFamily:
            f = HistogramMetricFamily(name, doc, labels=names)
            b = h.buckets()
            f.add_metric(lv, b, h.total)
            return f

        yield gauge("vllm:num_requests_running", "Requests in the running batch.", snap.num_running)
        yield gauge("vllm:num_requests_waiting", "Requests in the waiting queue.", snap.num_waiting)
        yield gauge("vllm:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).", snap.kv_usage)
        yield counter("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      snap.prefix_queries)  # fmt: skip
        yield counter("vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      snap.prefix_hits)  # fmt: skip
        yield counter("vllm:num_preemptions", "Requests preempted (KV cache full).", m._preemptions())
        yield counter(
            "vllm:prompt_tokens", "Prompt tokens of requests that got their first token.", m.prompt_tokens
        )
        yield counter("vllm:generation_tokens", "Output tokens generated.", m.generation_tokens)
        ok = CounterMetricFamily("vllm:request_success", "Requests that left the engine, by finish reason.",
                                 labels=[*names, "finished_reason"])  # fmt: skip
        for reason, v in m.success.items():
            ok.add_metric([*lv, reason], v)
        yield ok
        info = GaugeMetricFamily("vllm:cache_config_info", "KV-cache configuration (labels), value 1.",
                                 labels=[*names, *m.cache_config])  # fmt: skip
        info.add_metric([*lv, *m.cache_config.values()], 1.0)
        yield info
        if snap.adapters is not None:  # vLLM's LoRA gauge: the state is in the labels, the value is the time set
            st = snap.adapters
            lora = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                     labels=["max_lora", "waiting_lora_adapters", "running_lora_adapters"])
            lora.add_metric([str(st.max_loras), ",".join(st.waiting), ",".join(st.running)], time.time())
            yield lora
        yield hist("vllm:time_to_first_token_seconds", "Arrival to first token, emulated seconds.", m.ttft)
        yield hist(
            "vllm:time_per_output_token_seconds", "Gap between output tokens, emulated seconds.", m.itl
        )
        yield hist("vllm:inter_token_latency_seconds", "Gap between output tokens, emulated seconds.", m.itl)
        yield hist("vllm:e2e_request_latency_seconds", "Arrival to last token, emulated seconds.", m.e2e)
        yield hist("vllm:iteration_tokens_total", "Tokens per engine step (prompt + generated).",
                   m.iteration_tokens)
        yield hist("vllm:request_prompt_tokens", "Prompt tokens of finished requests.", m.request_prompt)
        yield hist("vllm:request_generation_tokens", "Generated tokens of finished requests.", m.request_generation)
        yield hist("vllm:request_time_per_output_token_seconds", "Mean gap between a finished request's output "
                   "tokens, emulated seconds.", m.request_tpot)
        yield hist("vllm:request_queue_time_seconds", "Arrival to first scheduling, emulated seconds.",
                   m.queue)  # fmt: skip
