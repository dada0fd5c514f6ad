"""PNG plots of a report: TTFT distribution per policy set, latency versus load, expert balancedness over time.

matplotlib with the Agg backend (no display; works in CI and over ssh). Every figure says it is simulated and
names the one model and cluster it shows (callers plot each setting apart), because a plot travels without
its report. What a reader can rely on:
- each series has its own colour *and* line style (20 colours x 4 styles, so 13 routers stay apart);
- the baseline (the first series) is black, thicker and drawn on top;
- series that coincide with another, exactly ("= baseline") or nearly ("≈ sjf": every decile and the p99
  within 3%), are named in the legend and in a note under the axes, since a hidden curve otherwise looks
  like a missing one;
- latencies are in milliseconds, as in the tables; log axes carry plain numbers (0.05, 0.1, 1, 10);
- the TTFT figure pairs the CDF with a log-scale survival curve (fraction of requests slower than x), where
  the p90-p99.9 tail that scheduling changes is as wide as the median.
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
from matplotlib import ticker  # noqa: E402

# A log axis once the data spans more than this factor: latencies under load spread over decades.
LOG_SPREAD = 20.0
MS = 1000.0
_COLOURS = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 == 0] + \
    [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i % 2 == 1]
_STYLES = ["-", "--", "-.", ":"]
BASELINE_STYLE: dict[str, Any] = {"color": "black", "linewidth": 2.6, "linestyle": "-", "zorder": 10}


def slug(*parts: object) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9.+-]+", "_", str(p)).strip("_") for p in parts if p is not None)


def style(i: int) -> dict[str, Any]:
    """Line style of the i-th series; 0 is the baseline. Distinct colour+dash pairs for 80 series."""
    if i == 0:
        return dict(BASELINE_STYLE)
    k = i - 1
    return {"color": _COLOURS[k % len(_COLOURS)], "linestyle": _STYLES[(k // len(_COLOURS)) % len(_STYLES)],
            "linewidth": 1.5, "zorder": 5}


NEAR = 0.03  # curves whose deciles and p99 all agree within 3% are drawn over each other at this size
_QS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99)


def coincide(series: Mapping[str, Any]) -> dict[str, str]:
    """label -> `= other` (identical values) or `≈ other` (every decile and the p99 within 3%), naming the
    first earlier series it matches, for series that would hide behind another."""
    seen: list[tuple[str, np.ndarray, np.ndarray]] = []
    same: dict[str, str] = {}
    for label, xs in series.items():
        a = np.asarray(xs, dtype=float)
        qa = np.nanquantile(a, _QS) if a.size else a
        for other, b, qb in seen:
            if a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=0.0, equal_nan=True):
                same[label] = f"= {other}"
                break
            if a.size and b.size and np.all(np.abs(qa - qb) <= NEAR * np.maximum(np.abs(qb), 1e-12)):
                same[label] = f"≈ {other}"
                break
        else:
            seen.append((label, a, qa))
    return same


def _plain(v: float, _: Any = None) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:g}"


def _plain_log_ticks(axis: Any, decades: float) -> None:
    """Major ticks as plain numbers (0.05, 1, 20, 1,000), minor ticks unlabelled: no colliding `3x10^-2`
    labels; 1-2-5 steps over a short span, powers of ten over a long one."""
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0,)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(_plain))
    axis.set_minor_formatter(ticker.NullFormatter())


def _log_if_spread(ax: Any, values: Sequence[float], axis: str) -> bool:
    pos = [v for v in values if v is not None and v > 0]
    if pos and max(pos) / min(pos) > LOG_SPREAD:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        _plain_log_ticks(ax.xaxis if axis == "x" else ax.yaxis, float(np.log10(max(pos) / min(pos))))
        return True
    return False


def _label(label: str, i: int, same: Mapping[str, str], baseline: str, extra: str = "") -> str:
    tag = " (baseline)" if i == 0 else ""
    if label in same:
        rel, other = same[label].split(" ", 1)
        tag += f" {rel} {'baseline' if other == baseline else other}"
    return f"{label}{tag}{extra}"


def _legend(ax: Any, n: int, source: Any = None) -> None:
    """The legend on `ax` of the series drawn on `source` (default `ax`)."""
    handles, labels = (source or ax).get_legend_handles_labels()
    if not handles:
        return
    if n > 6:  # many series: beside the axes, not over the curves
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.legend(handles, labels, fontsize=8)


def _note_same(fig: Any, same: Mapping[str, str]) -> None:
    if same:
        txt = "; ".join(f"{a} {b}" for a, b in same.items())
        fig.text(0.01, 0.005, f"Curves drawn over each other (= identical, ≈ within {NEAR:.0%} at every decile "
                 f"and p99): {txt}", fontsize=7, ha="left", va="bottom", wrap=True)


def ttft_cdf(series: Mapping[str, Sequence[float]], title: str, path: Path) -> Path:
    """TTFT per policy set (samples in seconds, drawn in ms): CDF on the left, log survival on the right."""
    series = {k: v for k, v in series.items() if len(v)}
    same = coincide({k: np.sort(np.asarray(v, dtype=float)) for k, v in series.items()})
    baseline = next(iter(series), "")
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(13, 5.2))
    everything: list[float] = []
    for i, (label, xs) in enumerate(series.items()):
        x = np.sort(np.asarray(xs, dtype=float)) * MS
        y = np.arange(1, x.size + 1) / x.size
        kw = {**style(i), "label": _label(label, i, same, baseline, f" (n={x.size})")}
        ax.step(x, y, where="post", **kw)
        surv = 1.0 - (np.arange(x.size)) / x.size  # P(TTFT >= x_k), never 0 so it fits a log axis
        tail.step(x, surv, where="post", **{**kw, "label": None})
        everything += [float(x[0]), float(x[-1])]
    for a in (ax, tail):
        _log_if_spread(a, everything, "x")
        a.set_xlabel("time to first token (ms)")
        a.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("fraction of requests with TTFT <= x (CDF)")
    ax.set_ylim(0, 1.01)
    ax.set_title("distribution", fontsize=9)
    n = max((len(v) for v in series.values()), default=1)
    tail.set_yscale("log")
    tail.set_ylim(max(0.5 / n, 1e-4), 1.05)
    tail.yaxis.set_major_locator(ticker.FixedLocator([1.0, 0.5, 0.1, 0.01, 0.001, 0.0001]))
    tail.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    tail.yaxis.set_minor_formatter(ticker.NullFormatter())
    for q, name in ((0.1, "p90"), (0.01, "p99"), (0.001, "p99.9")):
        if q >= 0.5 / n:
            tail.axhline(q, color="grey", linewidth=0.8, linestyle=":", zorder=1)
            tail.annotate(name, (1.0, q), xycoords=("axes fraction", "data"), fontsize=7, color="grey",
                          ha="right", va="bottom")
    tail.set_ylabel("fraction of requests with TTFT >= x (log)")
    tail.set_title("tail (survival, log scale)", fontsize=9)
    _legend(tail, len(series), source=ax)
    fig.suptitle(title, fontsize=10)
    _note_same(fig, same)
    return _save(fig, path)


def latency_vs_load(series: Mapping[str, Mapping[str, Sequence[Any]]], title: str, path: Path) -> Path:
    """Mean and p99 TTFT against offered load, one line per policy set.

    series[label] = {"load": [...], "mean": [...], "p99": [...]} in seconds (drawn in ms), optionally
    "mean_err"/"p99_err" (half-widths of confidence intervals, drawn as error bars).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    loads = [x for s in series.values() for x in s["load"]]
    span = (max(loads) - min(loads)) if loads else 0.0
    baseline = next(iter(series), "")
    same = coincide({k: [*s["load"], *s["mean"], *s["p99"]] for k, s in series.items()})
    for ax, stat, name in ((axes[0], "mean", "mean TTFT"), (axes[1], "p99", "p99 TTFT")):
        allv: list[float] = []
        for i, (label, s) in enumerate(series.items()):
            ys = [float(v) * MS for v in s[stat]]
            err = s.get(f"{stat}_err")
            err_ms = None if err is None else [float(e) * MS for e in err]
            # dodge the series sideways a little so that equal points and their error bars stay visible
            dx = 0.008 * span * (i - (len(series) - 1) / 2) if err is not None else 0.0
            ax.errorbar([x + dx for x in s["load"]], ys, yerr=err_ms, marker="o", markersize=4, capsize=3,
                        label=_label(label, i, same, baseline), **style(i))
            allv += ys
        _log_if_spread(ax, allv, "y")
        ax.set_xlabel("offered load (fraction of simulated capacity)")
        ax.set_ylabel(f"{name} (ms)")
        ax.set_title(name, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    _legend(axes[1], len(series))
    fig.suptitle(title, fontsize=10)
    _note_same(fig, same)
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
    fig, ax = plt.subplots(figsize=(11, 4.8))
    lows = [1.0]
    baseline = next(iter(series), "")
    same = coincide({k: v for k, (_, v) in series.items()})
    for i, (label, (t, v)) in enumerate(series.items()):
        ax.plot(t, v, label=_label(label, i, same, baseline), **{**style(i), "linewidth": style(i)["linewidth"] * 0.8})
        if v.size:
            lows.append(float(np.nanmin(v)))
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("expert balancedness (mean / max GPU load)")
    # zoom on the band the data occupies (differences of a few points matter), never below 0
    ax.set_ylim(max(0.0, min(lows) - 0.1), 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax, len(series))
    _note_same(fig, same)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
