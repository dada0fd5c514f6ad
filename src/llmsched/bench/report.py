"""The report folder of `llmsched compare`: summary.md, results.json and PNG plots.

`write_report` returns every path it wrote, and summary.md links every plot, so nothing in the folder is
unexplained and a test can check that each promised file exists. A manifest (`.llmsched-report.json`) lists
those files; the next report into the same folder removes them first, so no stale plot stays beside a new
summary, and a folder holding other files is refused rather than mixed into.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmsched.bench import plots
from llmsched.bench.columns import parse_column
from llmsched.bench.runner import strip_bulky
from llmsched.bench.scenario import Scenario
from llmsched.bench.tables import change, cluster, fmt, markdown_tables, setting
from llmsched.bench.traces import Skipped


def middle_load(loads: Sequence[float | None]) -> float | None:
    distinct = sorted({x for x in loads if x is not None})
    return distinct[len(distinct) // 2] if distinct else None


def _by_workload(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["scenario"], r["workload"]), []).append(r)
    return out


def _by_setting(records: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["scenario"], r["workload"], cluster(r)), []).append(r)
    return out


def make_plots(out: Path, records: Sequence[dict[str, Any]]) -> list[Path]:
    """Plots per scenario / workload and simulated setting: one model and one cluster per figure."""
    written = []
    groups = _by_setting(records)
    for (scenario, workload, _), recs in groups.items():
        several = sum(1 for k in groups if k[:2] == (scenario, workload)) > 1
        stem = plots.slug(scenario, workload, short_cluster(recs[0]) if several else None)
        mid = middle_load([r["load"] for r in recs])
        at_mid = [r for r in recs if r["load"] == mid]
        where = f"{scenario} / {workload}" + (f" @ load {mid:g}" if mid is not None else "")
        sub = setting(recs[0])
        cdf = {r["label"]: r["result"]["samples"]["ttft"] for r in at_mid
               if (r["result"].get("samples") or {}).get("ttft")}
        if cdf:
            written.append(plots.ttft_cdf(cdf, f"TTFT per policy set - {where}\n({sub})", out / f"{stem}-ttft-cdf.png"))
        loads = sorted({r["load"] for r in recs if r["load"] is not None})
        if len(loads) >= 2:
            series: dict[str, dict[str, list[float]]] = {}
            for r in sorted(recs, key=lambda r: r["load"]):
                s = series.setdefault(r["label"], {"load": [], "mean": [], "p99": []})
                s["load"].append(r["load"])
                s["mean"].append(r["result"]["ttft_s"]["mean"])
                s["p99"].append(r["result"]["ttft_s"]["p99"])
            written.append(plots.latency_vs_load(series, f"TTFT versus load - {scenario} / {workload}\n({sub})",
                                                 out / f"{stem}-latency-vs-load.png"))
        bal = {f"{r['label']} ({r['policies'].get('expert') or 'static'})": s for r in at_mid
               if (s := plots.as_series(r["result"].get("balancedness_series")))}
        if bal:
            n = (recs[0].get("simulated") or {}).get("instances", 1)
            inst = "instance 0 of " + str(n) + " (each instance places its experts itself)" if n != 1 else "1 instance"
            written.append(plots.balancedness(bal, f"Expert balancedness over time - {where}, {inst}\n({sub})",
                                              out / f"{stem}-balancedness.png"))
    return written


def short_cluster(rec: dict[str, Any]) -> str:
    """`qwen3-30b-a3b-1x2-a100-80g` (model, instances x GPUs each, GPU) for file names."""
    s = rec.get("simulated") or {}
    g = s.get("gpus_per_instance") or s.get("tp") or 1
    return f"{s.get('model')}-{s.get('instances')}x{g}-{s.get('gpu')}"


MANIFEST = ".llmsched-report.json"
_OURS = ("summary.md", "results.json")


def check_out_dir(out: Path, keep: tuple[str, ...] = ()) -> None:
    """Refuse a report folder that holds files llmsched did not write (they would be mixed with the report);
    `keep` names other files of ours that may be there (a sweep's runs.jsonl)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    if not out.is_dir() or (out / MANIFEST).is_file():
        return
    foreign = [p.name for p in out.iterdir() if p.name not in (*_OURS, *keep) and p.suffix != ".png"]
    if foreign:
        raise ValueError(f"--out {out}: the folder holds files that are not an llmsched report "
                         f"({', '.join(sorted(foreign)[:3])}{', ...' if len(foreign) > 3 else ''}); "
                         "choose another --out or empty it")


def clear_previous(out: Path, keep: tuple[str, ...] = ()) -> list[str]:
    """Remove what an earlier report wrote into `out` (listed in its manifest), so no stale plot stays."""
    check_out_dir(out, keep)
    if not out.is_dir():
        return []
    man = out / MANIFEST
    if man.is_file():
        try:
            names = [str(n) for n in json.loads(man.read_text()).get("files", [])]
        except (ValueError, AttributeError):
            names = []
    else:  # a report from before manifests: only our own names
        names = [p.name for p in out.iterdir() if p.name in _OURS or p.suffix == ".png"]
    removed = []
    for n in names:
        p = out / Path(n).name  # never outside the folder
        if p.is_file():
            p.unlink()
            removed.append(p.name)
    return removed


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llmsched")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def write_report(out: Path, records: Sequence[dict[str, Any]], scenarios: Sequence[Scenario],
                 skipped: Sequence[Skipped] = (), title: str = "llmsched compare",
                 quick: bool | None = None) -> list[Path]:
    """Write summary.md, results.json and the plots into `out`; returns every path written.

    Files of an earlier report in `out` are removed first (the manifest lists them), so the folder holds
    exactly this run's report.
    """
    clear_previous(out)
    out.mkdir(parents=True, exist_ok=True)
    pngs = make_plots(out, records)
    mode = None if quick is None else ("quick" if quick else "full")
    results = out / "results.json"
    results.write_text(json.dumps({"llmsched_version": version(), "mode": mode,
                                   "runs": [{**r, "result": strip_bulky(r["result"])} for r in records],
                                   "skipped": [_skip(s) for s in skipped]},
                                  indent=1, default=str))
    columns = {s.name: s.columns for s in scenarios}
    what = {"quick": "the quick pass (each scenario's `quick:` overrides: fewer requests, one load)",
            "full": "the full scenarios"}.get(mode or "", "")
    lines = [f"# {title} report", "",
             "Every figure here is **simulated** (llmsched's cluster simulator and cost model), not measured on "
             "GPUs. The first policy set of each table is its baseline; other rows show their change against it."
             + (f" This report ran {what}." if what else "")
             + f" llmsched {version()}.", ""]
    gains = headline_table(records, scenarios)
    if gains:
        lines += ["## What each layer gained vs the vLLM default (simulated)", "", gains, ""]
    lines += ["## Scenarios", ""]
    for s in scenarios:
        loads = ", ".join(f"{x:g}" for x in (s.loads or []))
        sizes = ", ".join(sorted({f"{w.label}: {_size(w)}" for w in s.workloads}))
        lines.append(f"- **{s.name}** ({s.source}): {' '.join(s.description.split())} "
                     f"*Ran: load{'s' if len(s.loads or []) > 1 else ''} {loads or 'as recorded'}; {sizes}.*")
    seen = {}
    for r in records:
        seen.setdefault((r["scenario"], r["workload"], cluster(r)), setting(r))
    lines += ["", "## Simulated settings", ""]
    lines += [f"- {sc} / {wl}: {st}" for (sc, wl, _), st in seen.items()]
    lines += ["", "## Results", "", markdown_tables(records, columns) if records else "No runs.", ""]
    lines += ["## Plots", "",
              "TTFT figures: CDF (left) and the fraction of requests slower than x on a log scale (right, the "
              "tail); the baseline is the thick black line; identical results are named under the axes.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pngs] or ["No plots (no per-request samples in the results)."]
    lines += ["", "## Skipped workloads", ""]
    lines += [f"- {s.scenario} / {s.workload}: {s.reason}" for s in skipped] or ["None."]
    summary = out / "summary.md"
    summary.write_text("\n".join(lines) + "\n")
    files = [summary, results, *pngs]
    write_manifest(out, files)
    return files


def write_manifest(out: Path, files: Sequence[Path]) -> None:
    (out / MANIFEST).write_text(json.dumps({"files": [f.name for f in files]}))


def _size(w: Any) -> str:
    n = w.num_requests or w.limit
    return f"{n:,} requests" if n else "whole trace"


def headline_table(records: Sequence[dict[str, Any]], scenarios: Sequence[Scenario]) -> str:
    """The summary's opening table: each scenario's `headline` rows (a layer's policy against the baseline
    of its table) with the figures of this run. Rows whose runs did not happen are left out."""
    mid = {k: middle_load([r["load"] for r in recs]) for k, recs in _by_workload(records).items()}
    at_mid = [r for r in records if r["load"] == mid[(r["scenario"], r["workload"])]]
    by = {(r["scenario"], r["workload"], r["label"]): r for r in at_mid}
    first: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in at_mid:
        first.setdefault((r["scenario"], r["workload"], cluster(r)), r)
    rows = []
    for sc in scenarios:
        for h in sc.headline:
            rec = by.get((sc.name, h.workload, h.policy))
            if rec is None:
                continue
            base = first[(sc.name, h.workload, cluster(rec))]
            if base is rec:
                continue
            figs = []
            for spec in h.columns:
                c = parse_column(spec)
                v, b = c.value(rec["result"]), c.value(base["result"])
                if v is None or b is None:
                    continue
                d = change(v, b)
                unit = " ms" if c.scale == 1000.0 else ""
                figs.append(f"{c.header.replace(' (ms)', '')}: {fmt(b * c.scale)} -> {fmt(v * c.scale)}{unit}"
                            + (f" (**{d:+.0f}%**)" if d is not None else ""))
            at = f" @ load {rec['load']:g}" if rec["load"] is not None else ""
            rows.append(f"| {h.layer} | {h.policy} vs {base['label']} | {sc.name} / {h.workload}{at}; "
                        f"{cluster(rec)} | {'; '.join(figs)} |")
    if not rows:
        return ""
    return "\n".join(["| layer | policy vs baseline | setting (simulated) | baseline -> ours |",
                      "|---|---|---|---|", *rows])


def _skip(s: Skipped) -> dict[str, str]:
    return {"scenario": s.scenario, "workload": s.workload, "reason": s.reason}
