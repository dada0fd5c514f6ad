"""Sweeps: grid expansion, resume after an interruption without repeating runs, CIs, pool vs Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import test_bench_fake as fake
import yaml

from llmsched.bench.executors import LocalPool, RayPool
from llmsched.bench.runlog import RunLog
from llmsched.bench.scenario import ScenarioError
from llmsched.bench.stats import mean_ci
from llmsched.bench.sweep import comparable, load_sweep, plan_sweep, run_sweep
from llmsched.bench.sweep_report import write_sweep_report

SCENARIO = {
    "name": "grid",
    "base": {"instances": 2},
    "workloads": [{"label": "syn", "kind": "synthetic", "name": "chat", "num_requests": 30}],
    "loads": [0.5, 1.0],
    "policies": [{"label": "rr", "request": "fcfs", "router": "round-robin"},
                 {"label": "lr", "request": "fcfs", "router": "least-requests"}],
    "columns": ["ttft_mean", "ttft_p99", "output_throughput"],
}


def sweep_file(tmp_path: Path, **extra: object) -> Path:
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(SCENARIO))
    p = tmp_path / "sweep.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "scenarios": ["grid.yaml"], "seeds": 3, **extra}))
    return p


def test_grid_is_the_product(tmp_path: Path) -> None:
    spec, scs = load_sweep(sweep_file(tmp_path, loads=[0.3, 0.6, 0.9]))
    plan = plan_sweep(spec, scs)
    assert len(plan.cells) == 2 * 3 * 3
    assert len({c.run_id for c in plan.cells}) == len(plan.cells)
    assert {c.seed for c in plan.cells} == {0, 1, 2}
    assert len(plan.caps) == 1  # capacity is measured once, with the scenario's own seed
    again = plan_sweep(*load_sweep(sweep_file(tmp_path, loads=[0.3, 0.6, 0.9])))
    assert [c.run_id for c in again.cells] == [c.run_id for c in plan.cells]  # ids are stable


@pytest.mark.parametrize(("extra", "needle"), [({"seeds": [1, 1]}, "seeds must be distinct"),
                                               ({"seedz": 3}, "seedz"), ({"loads": [0]}, "loads"),
                                               ({"loads": [float("nan")]}, "loads: every load must be finite"),
                                               ({"loads": [float("inf")]}, "loads: every load must be finite"),
                                               ({"policies": ["zz"]}, "none of ['zz']")])
def test_sweep_file_errors(tmp_path: Path, extra: dict, needle: str) -> None:
    """Each mistake is named with the sweep file and the field; NaN/inf loads included (NaN passed `x <= 0`)."""
    with pytest.raises(ScenarioError, match="sweep.yaml") as e:
        load_sweep(sweep_file(tmp_path, **extra))
    assert needle in str(e.value)


def test_resume_after_interrupt_repeats_nothing(tmp_path: Path) -> None:
    plan = plan_sweep(*load_sweep(sweep_file(tmp_path)))
    total = len(plan.cells)
    fake.CALLS.clear()
    with LocalPool(1) as pool:
        full = run_sweep(plan, RunLog(tmp_path / "ref.jsonl"), pool, simulate=fake.fake_simulate)
    assert len(fake.CALLS) == total + 1  # + the saturation run

    log_path = tmp_path / "out" / "runs.jsonl"
    fake.CALLS.clear()
    fake.STOP_AFTER[:] = [5]  # capacity + 4 runs, then ^C
    try:
        with pytest.raises(KeyboardInterrupt), LocalPool(1) as pool:
            run_sweep(plan, RunLog(log_path).load(), pool, simulate=fake.fake_simulate)
    finally:
        fake.STOP_AFTER.clear()
    with log_path.open("a") as f:
        f.write('{"kind": "run", "run_id": "half-writ')  # a line cut short by the kill
    log = RunLog(log_path).load()
    assert len(log.runs) == 4 and len(log.capacities) == 1 and log.dropped_tail
    fake.CALLS.clear()
    with LocalPool(1) as pool:
        resumed = run_sweep(plan, log, pool, simulate=fake.fake_simulate)
    assert len(fake.CALLS) == total - 4  # neither the finished runs nor the capacity are repeated
    assert comparable(resumed) == comparable(full)
    lines = log_path.read_text().splitlines()
    assert len(lines) == total + 1 and all(json.loads(line) for line in lines)
    fake.CALLS.clear()
    with LocalPool(1) as pool:
        run_sweep(plan, RunLog(log_path).load(), pool, simulate=fake.fake_simulate)
    assert fake.CALLS == []  # a finished sweep reruns nothing


def test_corrupt_middle_line_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "runs.jsonl"
    p.write_text('{"kind": "capacity", "key": "k", "capacity_rps": 1}\nnot json\n{"kind": "capacity"}\n')
    with pytest.raises(ValueError, match=r"runs\.jsonl:2: not a JSON line"):
        RunLog(p).load()


def test_mean_ci_t_distribution() -> None:
    m, h, n = mean_ci([1.0, 2.0, 3.0])
    assert (m, n) == (2.0, 3) and h == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(mean_ci([5.0])[1])


def test_sweep_report_files(tmp_path: Path) -> None:
    spec, scs = load_sweep(sweep_file(tmp_path))
    plan = plan_sweep(spec, scs)
    with LocalPool(1) as pool:
        recs = run_sweep(plan, RunLog(tmp_path / "r.jsonl"), pool, simulate=fake.fake_simulate)
    files = write_sweep_report(tmp_path / "rep", spec.name, recs, scs, plan.skipped, "inline")
    assert [f.name for f in files] == ["summary.md", "results.json", "grid-syn-latency-vs-load.png"]
    assert all(f.stat().st_size > 0 for f in files)
    agg = json.loads(files[1].read_text())["aggregates"]
    assert len(agg) == 4 and all(a["stats"]["ttft_mean"]["n"] == 3 for a in agg)
    assert " ± " in files[0].read_text()


def test_process_pool_and_ray_agree(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'llmsched[ray]')")
    plan = plan_sweep(*load_sweep(sweep_file(tmp_path, seeds=2)))
    with LocalPool(2) as pool:
        pooled = run_sweep(plan, RunLog(tmp_path / "pool.jsonl"), pool)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayPool("local") as rp:
            rayed = run_sweep(plan, RunLog(tmp_path / "ray.jsonl"), rp)
    finally:
        ray.shutdown()
    assert len(pooled) == len(plan.cells)
    assert comparable(pooled) == comparable(rayed)
