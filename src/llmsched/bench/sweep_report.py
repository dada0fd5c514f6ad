"""The report of a sweep: mean and 95% confidence interval across seeds for every scenario column."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmsched.bench import plots
from llmsched.bench.columns import parse_column
from llmsched.bench.report import clear_previous, short_cluster, version, write_manifest
from llmsched.bench.scenario import Scenario
from llmsched.bench.stats import mean_ci
from llmsched.bench.tables import cluster, fmt, setting
from llmsched.bench.traces import Skipped

Key = tuple[str, str, str, float | None]  # scenario, workload, label, load


def aggregate(records: Sequence[dict[str, Any]], columns: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per (scenario, workload, policy set, load): each column's mean, CI half-width and n."""
    groups: dict[Key, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["scenario"], r["workload"], r["label"], r["load"]), []).append(r)
    rows = []
    for (sc, wl, label, load), recs in groups.items():
        stats = {}
        for spec in columns.get(sc, []) + ["ttft_mean", "ttft_p99"]:
            col = parse_column(spec)
            xs = [v for r in recs if (v := col.value(r["result"])) is not None]
            m, h, n = mean_ci(xs)
            stats[spec] = {"mean": m, "ci95": h, "n": n}
        rows.append({"scenario": sc, "workload": wl, "label": label, "load": load,
                     "seeds": sorted(r["seed"] for r in recs), "simulated": recs[0].get("simulated"),
                     "stats": stats})
    return rows


def _cell(s: dict[str, float], scale: float) -> str:
    if s["n"] == 0:
        return "-"
    h = "" if math.isnan(s["ci95"]) else f" ± {fmt(s['ci95'] * scale)}"
    return f"{fmt(s['mean'] * scale)}{h}"


def markdown(rows: Sequence[dict[str, Any]], columns: dict[str, list[str]]) -> str:
    parts = []
    by_group: dict[tuple[str, str, float | None, str], list[dict[str, Any]]] = {}
    for r in rows:  # one table per simulated setting, as in `compare`
        by_group.setdefault((r["scenario"], r["workload"], r["load"], cluster(r)), []).append(r)
    for (sc, wl, load, _), rs in by_group.items():
        cols = [parse_column(c) for c in columns.get(sc, [])]
        head = ["policy set", "seeds", *(c.header for c in cols)]
        at = f" @ load {load:g}" if load is not None else ""
        lines = [f"### {sc} / {wl}{at} - {setting(rs[0])}", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        for r in rs:
            cells = [_cell(r["stats"][c.spec], c.scale) for c in cols]
            lines.append("| " + " | ".join([r["label"], str(len(r["seeds"])), *cells]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_sweep_report(out: Path, name: str, records: Sequence[dict[str, Any]], scenarios: Sequence[Scenario],
                       skipped: Sequence[Skipped] = (), executor: str = "") -> list[Path]:
    clear_previous(out, keep=("runs.jsonl",))
    out.mkdir(parents=True, exist_ok=True)
    columns = {s.name: s.columns for s in scenarios}
    rows = aggregate(records, columns)
    pngs = []
    by_wl: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        by_wl.setdefault((r["scenario"], r["workload"], cluster(r)), []).append(r)
    for (sc, wl, _), rs in by_wl.items():
        several = sum(1 for k in by_wl if k[:2] == (sc, wl)) > 1
        if len({r["load"] for r in rs if r["load"] is not None}) < 2:
            continue
        series: dict[str, dict[str, list[float]]] = {}
        for r in sorted(rs, key=lambda r: r["load"]):
            s = series.setdefault(r["label"], {"load": [], "mean": [], "p99": [], "mean_err": [], "p99_err": []})
            s["load"].append(r["load"])
            for stat in ("mean", "p99"):
                st = r["stats"][f"ttft_{stat}"]
                s[stat].append(st["mean"])
                s[f"{stat}_err"].append(0.0 if math.isnan(st["ci95"]) else st["ci95"])
        pngs.append(plots.latency_vs_load(
            series, f"TTFT versus load, mean of seeds with 95% CI - {sc} / {wl}\n({setting(rs[0])})",
            out / f"{plots.slug(sc, wl, short_cluster(rs[0]) if several else None)}-latency-vs-load.png"))
    results = out / "results.json"
    results.write_text(json.dumps({"name": name, "llmsched_version": version(), "runs": len(records),
                                   "aggregates": rows,
                                   "skipped": [{"scenario": s.scenario, "workload": s.workload, "reason": s.reason}
                                               for s in skipped]}, indent=1, default=str))
    lines = [f"# Sweep {name}", "",
             f"{len(records)} simulated runs ({executor}). Cells show the mean across seeds ± the half-width "
             "of its 95% confidence interval (Student's t). Every figure is simulated, not measured on GPUs.",
             "", "## Results", "", markdown(rows, columns), "", "## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs] or ["No plots (fewer than two loads)."]
    lines += ["", "## Skipped workloads", ""]
    lines += [f"- {s.scenario} / {s.workload}: {s.reason}" for s in skipped] or ["None."]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    write_manifest(out, [summary, results, *pngs])
    return [summary, results, *pngs]
