"""Table columns named in scenario files: `ttft_mean:short`, `e2e_p99`, `output_throughput`, ...

A column is a latency metric and a statistic (`<metric>_<stat>`, optionally restricted to one request class
with `:<class>`) or a named scalar of the simulate result. Parsing happens once, when a scenario is loaded,
so a typo is reported with the scenario's file name instead of as an empty table column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LATENCIES: dict[str, str] = {"ttft": "ttft_s", "tpot": "tpot_s", "e2e": "e2e_s", "queue": "queue_s"}
STATS = ("mean", "p50", "p90", "p99")
# name -> (result key, header, unit); scalars are not split by class.
SCALARS: dict[str, tuple[str, str, str]] = {
    "output_throughput": ("output_throughput_tok_s", "out tok/s", ""),
    "request_throughput": ("request_throughput_rps", "req/s", ""),
    "prefix_hit_rate": ("prefix_hit_rate", "prefix hit", "%"),
    "preemptions": ("preemptions", "preempt", ""),
    "completed": ("completed", "done", ""),
    "sim_duration": ("sim_duration_s", "sim s", ""),
    "expert_balancedness": ("expert_balancedness", "balancedness", ""),
    "a2a_bytes_per_token": ("a2a_bytes_per_token", "a2a B/tok", ""),
    "expert_migrations": ("expert_migrations", "migrations", ""),
}
# Lower is better for latencies and these scalars; the ablation marks improvements by this sign.
LOWER_IS_BETTER = {"preemptions", "a2a_bytes_per_token", "expert_migrations", "sim_duration"}


@dataclass(frozen=True, slots=True)
class Column:
    spec: str
    key: str  # result key (ttft_s, output_throughput_tok_s, ...)
    stat: str | None  # mean/p50/p90/p99 for latencies
    cls: str | None  # request class, or None for all requests
    header: str
    lower_is_better: bool
    scale: float  # display multiplier (s -> ms, fraction -> %)

    def value(self, result: dict[str, Any]) -> float | None:
        """The column's number in one simulate result, or None when the result lacks it (e.g. no such class)."""
        src: Any = result
        if self.cls is not None:
            src = (result.get("by_class") or {}).get(self.cls)
            if src is None:
                return None
        v = src.get(self.key)
        if isinstance(v, dict):
            v = v.get(self.stat or "mean")
        if v is None:
            return None
        try:
            return float(v)
        except (TypeError, ValueError):
            return None


def parse_column(spec: str) -> Column:
    """Parse one column spec; raises ValueError naming the spec and the accepted forms."""
    name, _, cls = spec.partition(":")
    name = name.strip()
    cls_or_none = cls.strip() or None
    if name in SCALARS:
        if cls_or_none is not None:
            raise ValueError(f"column {spec!r}: {name} is not split by class (drop ':{cls_or_none}')")
        key, header, unit = SCALARS[name]
        return Column(spec, key, None, None, header + (f" ({unit})" if unit else ""),
                      name in LOWER_IS_BETTER, 100.0 if unit == "%" else 1.0)
    metric, _, stat = name.rpartition("_")
    if metric in LATENCIES and stat in STATS:
        header = f"{metric.upper()} {stat}" + (f" {cls_or_none}" if cls_or_none else "") + " (ms)"
        return Column(spec, LATENCIES[metric], stat, cls_or_none, header, True, 1000.0)
    forms = ", ".join(f"{m}_<{'|'.join(STATS)}>[:class]" for m in LATENCIES)
    raise ValueError(f"unknown column {spec!r}; expected {forms} or one of {', '.join(SCALARS)}")
