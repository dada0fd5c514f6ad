"""Side-by-side tables of policy sets, one per scenario / workload / load, for the terminal and Markdown.

The first policy set of a scenario is its baseline (the vLLM default in the built-in ones); every other row
shows its change against it (against the first set of the same model and hardware, where sets override
them), which is the ablation the scenarios are written to show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from llmsched.bench.columns import Column, parse_column

Group = tuple[str, str, float | None]  # scenario, workload, load


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def change(v: float | None, base: float | None) -> float | None:
    """Relative change against the baseline, in percent."""
    if v is None or base is None or base == 0:
        return None
    return 100.0 * (v - base) / abs(base)


def groups(records: Sequence[dict[str, Any]]) -> list[tuple[Group, list[dict[str, Any]]]]:
    """Records grouped by scenario, workload and load, in the order in which they were planned."""
    out: dict[Group, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["scenario"], r["workload"], r["load"]), []).append(r)
    return list(out.items())


def setting(rec: dict[str, Any]) -> str:
    s = rec.get("simulated") or {}
    tp = f", tp{s['tp']}" if s.get("tp") else ""
    return f"simulated: {s.get('model', '?')} on {s.get('instances', '?')} instance(s) of {s.get('gpu', '?')}{tp}"


def title(group: Group, rec: dict[str, Any]) -> str:
    scenario, workload, load = group
    at = f" @ load {load:g}" if load is not None else ""
    return f"{scenario} / {workload}{at} - {setting(rec)}"


def rows(records: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    """Rows of one group: label, then each column's value with its change against the first row of the same
    simulated setting (sets that override the model are compared with their own model's baseline)."""
    first: dict[str, dict[str, Any]] = {}
    for rec in records:
        first.setdefault(setting(rec), rec)
    mixed = len(first) > 1  # e.g. sets that override the model: name each one's
    out = []
    for rec in records:
        s = rec.get("simulated") or {}
        row = [rec["label"] + (f" [{s.get('model')}, {s.get('instances')}x {s.get('gpu')}]" if mixed else "")]
        base_rec = first[setting(rec)]
        for c in columns:
            v = c.value(rec["result"])
            cell = fmt(None if v is None else v * c.scale)
            d = change(v, c.value(base_rec["result"]))
            if rec is not base_rec and d is not None:
                cell += f" ({d:+.0f}%)"
            row.append(cell)
        out.append(row)
    return out


def rich_tables(records: Sequence[dict[str, Any]], columns: dict[str, list[str]]) -> list[Table]:
    tables = []
    for group, recs in groups(records):
        cols = [parse_column(c) for c in columns.get(group[0], [])]
        t = Table(title=title(group, recs[0]), title_justify="left")
        t.add_column("policy set", style="bold", no_wrap=True)
        for c in cols:
            t.add_column(c.header, justify="right")
        for row in rows(recs, cols):
            t.add_row(*row)
        tables.append(t)
    return tables


def markdown_tables(records: Sequence[dict[str, Any]], columns: dict[str, list[str]]) -> str:
    parts = []
    for group, recs in groups(records):
        cols = [parse_column(c) for c in columns.get(group[0], [])]
        head = ["policy set", *(c.header for c in cols)]
        lines = [f"### {title(group, recs[0])}", "", "| " + " | ".join(head) + " |",
                 "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows(recs, cols)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
