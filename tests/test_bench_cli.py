"""The typer commands end to end on tiny scenarios with the real simulator (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml
from typer.testing import CliRunner

from llmsched.cli import app as llmsched_app

TINY = {
    "name": "tiny",
    "base": {"instances": 2},
    "workloads": [{"label": "chat", "kind": "synthetic", "name": "chat", "num_requests": 30},
                  {"label": "gone", "kind": "trace", "path": "no/such.csv", "requires_trace": True}],
    "loads": [0.8],
    "policies": [{"label": "rr", "request": "fcfs", "router": "round-robin"},
                 {"label": "lr", "request": "fcfs", "router": "least-requests"}],
}


def app() -> typer.Typer:
    return llmsched_app  # the real app: its lazy commands and its one-line errors


def test_compare_json_and_report(tmp_path: Path) -> None:
    sc = tmp_path / "tiny.yaml"
    sc.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "rep"
    res = CliRunner().invoke(app(), ["compare", "--scenario", str(sc), "--json", "--out", str(out), "--jobs", "1",
                                     "--traces", str(tmp_path)])
    assert res.exit_code == 1, res.output  # a workload was skipped: the report is written, the run is incomplete
    runs = json.loads(res.stdout)["runs"]
    assert [r["label"] for r in runs] == ["rr", "lr"] and runs[0]["result"]["completed"] == 30
    assert "skipping tiny / gone" in res.stderr and "1 workload(s) skipped" in res.stderr
    assert {"summary.md", "results.json", "tiny-chat-ttft-cdf.png"} <= {p.name for p in out.iterdir()}


def test_compare_bad_scenario_exits_2(tmp_path: Path) -> None:
    sc = tmp_path / "bad.yaml"
    sc.write_text(yaml.safe_dump({**TINY, "columns": ["nope"]}))
    res = CliRunner().invoke(app(), ["compare", "--scenario", str(sc)])
    assert res.exit_code == 2 and "bad.yaml" in res.stderr and "unknown column 'nope'" in res.stderr


def test_sweep_twice_resumes(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    sw = tmp_path / "sweep.yaml"
    sw.write_text(yaml.safe_dump({"name": "s", "scenarios": ["tiny.yaml"], "seeds": 2}))
    args = ["sweep", str(sw), "--out", str(tmp_path / "o"), "--jobs", "1", "--traces", str(tmp_path)]
    first = CliRunner().invoke(app(), args)
    assert first.exit_code == 1, first.output  # the `gone` workload was skipped: incomplete
    assert "4 runs, 0 already" in first.stderr
    second = CliRunner().invoke(app(), args)
    assert "4 runs, 4 already" in second.stderr and "(0 new)" in second.stderr
    assert "±" in (tmp_path / "o" / "summary.md").read_text()
