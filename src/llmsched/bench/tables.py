"""Side-by-side tables of policy sets, one per scenario / workload / load, for the terminal and Markdown.

The first policy set of a scenario is its baseline (the vLLM default in the built-in ones); every other row
shows its change against it, which is the ablation the scenarios are written to show. Policy sets that
override the model or hardware get a table of their own (one model and one cluster per table, its first set
as baseline), so no row is ever compared with another model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from llmsched.bench.columns import Column, parse_column

Group = tuple[str, str, float | None, str]  # scenario, workload, load, simulated setting


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
    """Records grouped by scenario, workload, load and simulated setting, in the order they were planned."""
    out: dict[Group, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault((r["scenario"], r["workload"], r["load"], cluster(r)), []).append(r)
    return list(out.items())


def cluster(rec: dict[str, Any]) -> str:
    """`qwen3-30b-a3b, 1 instance x 2 a100-80g (TP2, EP2)`: the model and hardware a record ran on."""
    s = rec.get("simulated") or {}
    n = s.get("instances", "?")
    g = s.get("gpus_per_instance") or s.get("tp") or 1
    par = [f"TP{s['tp']}"] if (s.get("tp") or 1) > 1 else []
    if s.get("expert_parallel"):
        par.append(f"EP{s['expert_parallel']}")
    return (f"{s.get('model', '?')}, {n} instance{'' if n == 1 else 's'} x {g} {s.get('gpu', '?')}"
            + (f" ({', '.join(par)})" if par else ""))


def setting(rec: dict[str, Any]) -> str:
    return f"simulated: {cluster(rec)}"


def title(group: Group, rec: dict[str, Any]) -> str:
    scenario, workload, load, _ = group
    at = f" @ load {load:g}" if load is not None else ""
    return f"{scenario} / {workload}{at} - {setting(rec)}"


def rows(records: Sequence[dict[str, Any]], columns: Sequence[Column]) -> list[list[str]]:
    """Rows of one group (one simulated setting): label, then each column's value with its change against
    the group's first row, its baseline."""
    out = []
    base_rec = records[0]
    for rec in records:
        row = [rec["label"] + (" (baseline)" if rec is base_rec and len(records) > 1 else "")]
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
