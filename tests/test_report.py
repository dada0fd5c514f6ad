"""The report writer produces every file it promises, each linked from summary.md."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from test_bench_fake import fake_native_rate, fake_simulate

from llmsched.bench import compare as cmp
from llmsched.bench.executors import LocalPool
from llmsched.bench.report import middle_load, write_report
from llmsched.bench.tables import fmt
from llmsched.bench.traces import Skipped

SCENARIO = {
    "name": "moe-ish",
    "description": "MoE model, two loads, two policy sets",
    "base": {"model": "qwen3-30b-a3b", "gpu": "a100-80g", "tp": 2, "instances": 2},
    "workloads": [{"label": "syn", "kind": "synthetic", "name": "chat", "num_requests": 300}],
    "loads": [0.5, 0.8, 1.1],
    "policies": [{"label": "vllm-default", "request": "fcfs", "router": "round-robin"},
                 {"label": "sjf", "request": "sjf", "router": "round-robin"},
                 {"label": "other", "request": "fcfs", "router": "round-robin", "overrides": {"instances": 3}}],
    "columns": ["ttft_mean", "ttft_p99:short", "output_throughput", "expert_balancedness"],
}


def test_report_writes_every_promised_file(tmp_path: Path) -> None:
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump(SCENARIO))
    comp = cmp.prepare([str(p)], quick=False)
    with LocalPool(1) as pool:
        cmp.run(comp, pool, simulate=fake_simulate, native_rate=fake_native_rate)
    skipped = [Skipped("moe-ish", "azure", "trace x not found")]
    out = tmp_path / "report"
    files = write_report(out, comp.records, comp.scenarios, skipped)
    names = {f.name for f in files}
    # two settings (2 and 3 instances): plots per setting, never two clusters on one axis
    assert {"summary.md", "results.json"} | {f"moe-ish-syn-qwen3-30b-a3b-{n}x2-a100-80g-{kind}.png" for n in (2, 3)
                                              for kind in ("ttft-cdf", "latency-vs-load", "balancedness")} == names
    for f in files:
        assert f.is_file() and f.stat().st_size > 0
    summary = (out / "summary.md").read_text()
    for f in files[2:]:
        assert f"]({f.name})" in summary
    assert "simulated" in summary and "qwen3-30b-a3b" in summary and "trace x not found" in summary
    # each setting has its own tables, titled with its cluster; a row compares with its own table's baseline
    assert "qwen3-30b-a3b, 3 instances x 2 a100-80g (TP2)" in summary
    sjf_row = next(line for line in summary.splitlines() if line.startswith("| sjf |"))
    other_row = next(line for line in summary.splitlines() if line.startswith("| other |"))
    assert "%)" in sjf_row  # change against the baseline row of its setting
    assert "%)" not in other_row  # the only set of its setting is its own baseline
    data = json.loads((out / "results.json").read_text())
    assert data["mode"] is None and data["llmsched_version"]
    assert len(data["runs"]) == 9 and data["skipped"][0]["workload"] == "azure"  # 3 sets x 3 loads
    run = data["runs"][0]
    assert {"scenario", "workload", "label", "load", "policies", "result"} <= set(run)
    assert "samples" not in run["result"] and "balancedness_series" not in run["result"]
    assert all(f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in files[2:])


def test_middle_load() -> None:
    assert middle_load([1.1, 0.5, 0.8, 0.5]) == 0.8
    assert middle_load([None]) is None


def _records(tmp_path: Path) -> tuple[list, list]:
    p = tmp_path / "sc.yaml"
    p.write_text(yaml.safe_dump({**SCENARIO, "headline": [
        {"layer": "request", "workload": "syn", "policy": "sjf", "columns": ["ttft_mean"]}]}))
    comp = cmp.prepare([str(p)], quick=False)
    with LocalPool(1) as pool:
        cmp.run(comp, pool, simulate=fake_simulate, native_rate=fake_native_rate)
    return comp.records, comp.scenarios


def test_report_folder_holds_only_the_latest_report(tmp_path: Path) -> None:
    import pytest

    records, scenarios = _records(tmp_path)
    out = tmp_path / "report"
    out.mkdir()
    (out / "old-plot.png").write_bytes(b"stale")  # a report from before manifests
    first = write_report(out, records, scenarios, quick=True)
    assert not (out / "old-plot.png").exists()
    (out / "moe-ish-syn-qwen3-30b-a3b-2x2-a100-80g-ttft-cdf.png").unlink()
    (out / "x.png").write_bytes(b"not ours, but a png")
    second = write_report(out, records[:3], scenarios, quick=False)  # fewer runs: fewer plots
    assert {p.name for p in out.iterdir()} == {p.name for p in second} | {".llmsched-report.json", "x.png"}
    assert len(second) < len(first)
    assert json.loads((out / "results.json").read_text())["mode"] == "full"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(ValueError, match="not an llmsched report"):
        write_report(foreign, records, scenarios)
    assert (foreign / "thesis.tex").read_text() == "keep me"


def test_summary_opens_with_what_each_layer_gained(tmp_path: Path) -> None:
    records, scenarios = _records(tmp_path)
    out = tmp_path / "report"
    write_report(out, records, scenarios, quick=True)
    summary = (out / "summary.md").read_text()
    head = summary.index("## What each layer gained")
    assert head < summary.index("## Scenarios")
    row = next(line for line in summary.splitlines() if line.startswith("| request | sjf vs vllm-default"))
    base = next(r for r in records if r["label"] == "vllm-default" and r["load"] == 0.8)
    ours = next(r for r in records if r["label"] == "sjf" and r["load"] == 0.8)
    b, v = base["result"]["ttft_s"]["mean"] * 1000, ours["result"]["ttft_s"]["mean"] * 1000
    assert f"{fmt(b)} -> {fmt(v)} ms" in row and "@ load 0.8" in row
    assert "This report ran the quick pass" in summary
