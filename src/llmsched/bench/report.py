"""The report folder of `llmsched compare`: summary.md, results.json and PNG plots.

`write_report` returns every path it wrote, and summary.md links every plot, so nothing in the folder is
unexplained and a test can check that each promised file exists.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmsched.bench import plots
from llmsched.bench.runner import strip_bulky
from llmsched.bench.scenario import Scenario
from llmsched.bench.tables import markdown_tables, setting
from llmsched.bench.traces import Skipped


def middle_load(loads: Sequence[float | None]) -> float | None:
    distinct = sorted({x for x in loads if x is not None})
    return distinct[len(distinct) // 2] if distinct else None


def _by_workload(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["scenario"], r["workload"]), []).append(r)
    return out


def make_plots(out: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
    written = []
    for (scenario, workload), recs in _by_workload(records).items():
        mid = middle_load([r["load"] for r in recs])
        at_mid = [r for r in recs if r["load"] == mid]
        where = f"{scenario} / {workload}" + (f" @ load {mid:g}" if mid is not None else "")
        sub = setting(recs[0])
        cdf = {r["label"]: r["result"]["samples"]["ttft"] for r in at_mid
               if (r["result"].get("samples") or {}).get("ttft")}
        if cdf:
            written.append(plots.ttft_cdf(cdf, f"TTFT CDF per policy set - {where}\n({sub})",
                                          out / f"{plots.slug(scenario, workload)}-ttft-cdf.png"))
        loads = sorted({r["load"] for r in recs if r["load"] is not None})
        if len(loads) >= 2:
            series: dict[str, dict[str, list[float]]] = {}
            for r in sorted(recs, key=lambda r: r["load"]):
                s = series.setdefault(r["label"], {"load": [], "mean": [], "p99": []})
                s["load"].append(r["load"])
                s["mean"].append(r["result"]["ttft_s"]["mean"])
                s["p99"].append(r["result"]["ttft_s"]["p99"])
            written.append(plots.latency_vs_load(series, f"TTFT versus load - {scenario} / {workload}\n({sub})",
                                                 out / f"{plots.slug(scenario, workload)}-latency-vs-load.png"))
        bal = {f"{r['label']} ({r['policies'].get('expert') or 'static'})": s for r in at_mid
               if (s := plots.as_series(r["result"].get("balancedness_series")))}
        if bal:
            written.append(plots.balancedness(bal, f"Expert balancedness over time - {where}\n({sub})",
                                              out / f"{plots.slug(scenario, workload)}-balancedness.png"))
    return written


def write_report(out: Path, records: Sequence[dict[str, Any]], scenarios: Sequence[Scenario],
                 skipped: Sequence[Skipped] = (), title: str = "llmsched compare") -> list[Path]:
    """Write summary.md, results.json and the plots into `out`; returns every path written."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = make_plots(out, records)
    results = out / "results.json"
    results.write_text(json.dumps({"runs": [{**r, "result": strip_bulky(r["result"])} for r in records],
                                   "skipped": [_skip(s) for s in skipped]},
                                  indent=1, default=str))
    columns = {s.name: s.columns for s in scenarios}
    lines = [f"# {title} report", "",
             "Every figure here is **simulated** (llmsched's cluster simulator and cost model), not measured on "
             "GPUs. The first policy set of each table is its baseline; other rows show their change against it.",
             "", "## Scenarios", ""]
    for s in scenarios:
        lines.append(f"- **{s.name}** ({s.source}): {' '.join(s.description.split())}")
    seen = {}
    for r in records:
        seen.setdefault((r["scenario"], r["workload"]), setting(r))
    lines += ["", "## Simulated settings", ""]
    lines += [f"- {sc} / {wl}: {st}" for (sc, wl), st in seen.items()]
    lines += ["", "## Results", "", markdown_tables(records, columns) if records else "No runs.", ""]
    lines += ["## Plots", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs] or ["No plots (no per-request samples in the results)."]
    lines += ["", "## Skipped workloads", ""]
    lines += [f"- {s.scenario} / {s.workload}: {s.reason}" for s in skipped] or ["None."]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    return [summary, results, *pngs]


def _skip(s: Skipped) -> dict[str, str]:
    return {"scenario": s.scenario, "workload": s.workload, "reason": s.reason}
