"""PNG plots of a report: TTFT CDF per policy, latency versus load, expert balancedness over time.

matplotlib with the Agg backend (no display; works in CI and over ssh). Every figure says it is simulated and
names the setting, because a plot travels without its report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# A log axis once the data spans more than this factor: latencies under load spread over decades.
LOG_SPREAD = 20.0


def slug(*parts: object) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", str(p)).strip("_") for p in parts if p is not None)


def _log_if_spread(ax: Any, values: Sequence[float], axis: str) -> None:
    pos = [v for v in values if v is not None and v > 0]
    if pos and max(pos) / min(pos) > LOG_SPREAD:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def ttft_cdf(series: Mapping[str, Sequence[float]], title: str, path: Path) -> Path:
    """One step CDF per policy set of its requests' TTFT (seconds)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    everything: list[float] = []
    for label, xs in series.items():
        x = np.sort(np.asarray(xs, dtype=float))
        if x.size == 0:
            continue
        y = np.arange(1, x.size + 1) / x.size
        ax.step(x, y, where="post", label=f"{label} (n={x.size})", linewidth=1.6)
        everything += [float(x[0]), float(x[-1])]
    _log_if_spread(ax, everything, "x")
    ax.set_xlabel("time to first token (s)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path)


def latency_vs_load(series: Mapping[str, Mapping[str, Sequence[Any]]], title: str, path: Path) -> Path:
    """Mean and p99 TTFT against offered load, one line per policy set.

    series[label] = {"load": [...], "mean": [...], "p99": [...]} in seconds, optionally "mean_err"/"p99_err"
    (half-widths of confidence intervals, drawn as error bars).
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    loads = [x for s in series.values() for x in s["load"]]
    span = (max(loads) - min(loads)) if loads else 0.0
    for ax, stat, name in ((axes[0], "mean", "mean TTFT"), (axes[1], "p99", "p99 TTFT")):
        allv: list[float] = []
        for i, (label, s) in enumerate(series.items()):
            ys = [float(v) for v in s[stat]]
            err = s.get(f"{stat}_err")
            # dodge the series sideways a little so that equal points and their error bars stay visible
            dx = 0.008 * span * (i - (len(series) - 1) / 2) if err is not None else 0.0
            ax.errorbar([x + dx for x in s["load"]], ys, yerr=err, marker="o", capsize=3, label=label,
                        linewidth=1.6, alpha=0.85)
            allv += ys
        _log_if_spread(ax, allv, "y")
        ax.set_xlabel("offered load (fraction of simulated capacity)")
        ax.set_ylabel(f"{name} (s)")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def as_series(raw: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(times, balancedness) from either {"t": [...], "value": [...]} or a list of (t, value) pairs."""
    if raw is None:
        return None
    if isinstance(raw, Mapping):
        t = next((raw[k] for k in ("t", "time", "time_s", "times") if k in raw), None)
        v = next((raw[k] for k in ("value", "values", "balancedness") if k in raw), None)
        if t is None or v is None:
            return None
        return np.asarray(t, dtype=float), np.asarray(v, dtype=float)
    arr = np.asarray(raw, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        return None
    return arr[:, 0], arr[:, 1]


def balancedness(series: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """Expert balancedness (mean GPU load / max GPU load; 1 is perfect) over simulated time per placer."""
    fig, ax = plt.subplots(figsize=(9, 4.8))
    lows = [1.0]
    for label, (t, v) in series.items():
        ax.plot(t, v, label=label, linewidth=1.4)
        if v.size:
            lows.append(float(np.nanmin(v)))
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("expert balancedness (mean / max GPU load)")
    # zoom on the band the data occupies (differences of a few points matter), never below 0
    ax.set_ylim(max(0.0, min(lows) - 0.1), 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
