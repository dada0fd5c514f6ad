"""vLLM's Prometheus text -> `InstanceSnapshot`: what the router knows of a backend between scrapes.

Pure functions, so the mapping is tested on fixed texts. A data-parallel vLLM exports one series per engine
(label `engine`): request counts, prefix counters and `num_gpu_blocks` add up over label sets, while the KV
usage ratio is the mean weighted by each engine's blocks (used blocks / all blocks of the backend: vLLM's own
DP balancer spreads requests over its engines, so the backend's headroom is the pooled one; a sum would read two
half-full engines as saturated). Missing series read as 0: SGLang and older vLLM versions export fewer of them,
and the router's own in-flight accounting fills the gap. The page is walked once (`read_samples`): the LoRA gauge
the pools read (`pools.lora_state`) is kept beside the serving series.
"""

from __future__ import annotations

import contextlib
import math
import re

from prometheus_client.parser import text_string_to_metric_families

from llmsched.core.types import InstanceSnapshot

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # new name first; the old one until v0.10
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
CACHE_CONFIG = "vllm:cache_config_info"
LORA_INFO = "vllm:lora_requests_info"  # the LoRA adapters' state (`pools.lora_state`)

_WANTED = {RUNNING, WAITING, *KV_USAGE, PREFIX_QUERIES, PREFIX_HITS}
_KEPT = {*_WANTED, CACHE_CONFIG, LORA_INFO}


class MetricsParseError(ValueError):
    pass


# One sample line of the text format: name, optional {labels}, value, optional timestamp.
_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?[ \t]+(\S+)(?:[ \t]+-?\d+)?[ \t]*")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r'\\[\\n"]')
_UNESCAPED = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}
Sample = tuple[str, dict[str, str], float]


# The lines of the kept series, found in one scan of the page: the literal prefix "\nvllm:" lets the regex
# engine skip to each `vllm:` line, and only the kept names go on to the strict sample pattern.
_KEPT_NAMES = "|".join(re.escape(k[len("vllm:"):]) for k in sorted(_KEPT, key=len, reverse=True))
_KEPT_LINE = re.compile(r"\nvllm:(?:" + _KEPT_NAMES + r")[{ \t][^\r\n]*")


def _wanted_samples(text: str) -> list[Sample]:
    """The few sample lines the gateway needs, read directly: vLLM's page has hundreds of lines (histograms);
    prometheus_client's full parser took ~2.4 ms for the emulator's, and a Python walk over every line ~0.35 ms,
    per backend and scrape; this scan ~0.07 ms. Label values are unescaped as that parser does (an adapter's name
    is one). A malformed line of a kept series raises ValueError; other lines are not read."""
    out: list[Sample] = []
    for found in _KEPT_LINE.finditer(text if text.startswith("\n") else "\n" + text):
        line = found.group()[1:]
        m = _SAMPLE.fullmatch(line)
        if m is None:
            raise ValueError(f"malformed sample line {line[:80]!r}")
        raw = m.group(2) or ""
        labels = dict(_LABEL.findall(raw))
        if "\\" in raw:
            labels = {k: _ESCAPE.sub(lambda e: _UNESCAPED[e.group()], v) for k, v in labels.items()}
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def _all_samples(text: str) -> list[Sample]:
    return [(s.name, s.labels, float(s.value)) for fam in text_string_to_metric_families(text) for s in fam.samples]


def read_samples(text: str) -> list[Sample]:
    """The samples of a `/metrics` page that the gateway reads (serving series, cache config, LoRA gauge), in one
    walk of the page. A page without any serving series or cache config (SGLang, garbage) goes through the full
    Prometheus parser, so that a page it cannot read raises `MetricsParseError`."""
    try:
        samples = _wanted_samples(text)
        if all(s[0] == LORA_INFO for s in samples):
            samples = _all_samples(text)
    except ValueError as e:
        raise MetricsParseError(f"unparseable Prometheus text: {e}") from None
    return samples


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """`metrics_values` of the page's samples (`read_samples`)."""
    return metrics_values(read_samples(text))


def metrics_values(samples: list[Sample]) -> dict[str, float]:
    """Each wanted series combined over its label sets (see the module doc); `num_gpu_blocks` from
    cache_config_info if present."""
    out: dict[str, float] = {}
    kv: dict[str, list[tuple[str, float]]] = {}  # KV-usage name -> (engine label, value) per series
    blocks: dict[str, float] = {}  # engine label -> num_gpu_blocks
    for name, labels, v in samples:
        if name in _WANTED:
            if not math.isfinite(v):  # NaN/Inf are valid Prometheus text, but no count or ratio
                continue
            if name in KV_USAGE:
                kv.setdefault(name, []).append((labels.get("engine", ""), v))
            else:
                out[name] = out.get(name, 0.0) + v
        elif name == CACHE_CONFIG and "num_gpu_blocks" in labels:
            with contextlib.suppress(ValueError):
                blocks[labels.get("engine", "")] = float(labels["num_gpu_blocks"])
    if blocks:
        out["num_gpu_blocks"] = sum(blocks.values())
    for name, series in kv.items():
        weights = [blocks.get(engine, 0.0) for engine, _ in series]
        if all(w > 0 for w in weights):
            out[name] = sum(w * v for w, (_, v) in zip(weights, series, strict=True)) / sum(weights)
        else:  # block counts unknown per engine: engines of one backend are alike, so the plain mean
            out[name] = sum(v for _, v in series) / len(series)
    return out


def snapshot_from_metrics(values: dict[str, float], instance: int, now: float) -> InstanceSnapshot:
    kv = next((values[k] for k in KV_USAGE if k in values), 0.0)
    total = int(values.get("num_gpu_blocks", 0))
    return InstanceSnapshot(
        instance=instance,
        time=now,
        num_running=int(values.get(RUNNING, 0)),
        num_waiting=int(values.get(WAITING, 0)),
        kv_usage=min(max(kv, 0.0), 1.0),
        num_free_blocks=int(round(total * (1.0 - kv))),
        num_total_blocks=total,
        pending_prefill_tokens=None,  # not exported by vLLM: the router keeps its own outstanding-prefill account
        prefix_queries=int(values.get(PREFIX_QUERIES, 0)),
        prefix_hits=int(values.get(PREFIX_HITS, 0)),
        healthy=True,
    )


def empty_snapshot(instance: int, now: float, healthy: bool = True) -> InstanceSnapshot:
    """Before the first scrape: an idle instance (the router's own counts still apply)."""
    return InstanceSnapshot(instance, now, 0, 0, 0.0, 0, 0, None, healthy=healthy)
