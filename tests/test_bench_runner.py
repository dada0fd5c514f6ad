"""The runner: capacity -> rate, records, process pool equals inline, determinism of a real run by seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_bench_fake import fake_native_rate, fake_simulate

from llmsched.bench import compare as cmp
from llmsched.bench.executors import LocalPool
from llmsched.bench.plan import SATURATION_RATE
from llmsched.bench.runner import run_sim
from llmsched.bench.sweep import comparable

SCENARIO = {
    "name": "t",
    "base": {"instances": 2, "seed": 1},
    "workloads": [{"label": "syn", "kind": "synthetic", "name": "chat", "num_requests": 40},
                  {"label": "tr", "kind": "trace", "path": "builtin:sample", "num_requests": 40}],
    "loads": [0.5, 1.0],
    "policies": [{"label": "base", "request": "fcfs", "router": "round-robin"},
                 {"label": "other", "request": "fcfs", "router": "round-robin", "overrides": {"instances": 4}}],
}


def prepared(tmp_path: Path) -> cmp.Comparison:
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump(SCENARIO))
    return cmp.prepare([str(p)], quick=False)


def test_loads_become_rates_from_measured_capacity(tmp_path: Path) -> None:
    comp = prepared(tmp_path)
    assert len(comp.cells) == 2 * 2 * 2
    assert len(comp.caps) == 4  # per (base, workload): the `other` set has another instance count
    assert all(c.workload.rate == SATURATION_RATE for c in comp.caps.values() if c.workload.kind == "synthetic")
    with LocalPool(1) as pool:
        cmp.run(comp, pool, simulate=fake_simulate, native_rate=fake_native_rate)
    recs = {(r["workload"], r["label"], r["load"]): r for r in comp.records}
    # the fake's capacity is 10 req/s per instance
    assert recs[("syn", "base", 0.5)]["rate"] == pytest.approx(10.0)
    assert recs[("syn", "other", 1.0)]["capacity_rps"] == pytest.approx(40.0)
    tr = recs[("tr", "base", 0.5)]
    assert tr["rate_scale"] == pytest.approx(0.5 * 20.0 / 5.0) and tr["native_rate"] == 5.0
    r = recs[("syn", "base", 1.0)]
    assert r["policies"] == {"request": "fcfs", "router": "round-robin", "expert": None}
    assert r["simulated"]["instances"] == 2 and r["result"]["completed"] == 40
    assert [(r["workload"], r["label"]) for r in comp.records][:2] == [("syn", "base"), ("syn", "base")]


def test_process_pool_gives_the_inline_results(tmp_path: Path) -> None:
    comp = prepared(tmp_path)
    with LocalPool(1) as pool:
        inline = cmp.run(comp, pool, simulate=fake_simulate, native_rate=fake_native_rate).records
    comp2 = prepared(tmp_path)
    with LocalPool(2) as pool:
        pooled = cmp.run(comp2, pool, simulate=fake_simulate, native_rate=fake_native_rate).records
    assert comparable(inline) == comparable(pooled)


def test_real_run_is_deterministic_by_seed() -> None:
    cfg = {"workload": {"kind": "synthetic", "name": "mixed", "num_requests": 60, "rate": 4.0},
           "instances": 2, "router": "round-robin", "seed": 5}
    a = run_sim(None, cfg, True)
    b = run_sim(None, cfg, True)
    c = run_sim(None, {**cfg, "seed": 6}, True)
    assert comparable(a) == comparable(b)
    assert a["samples"]["ttft"] != c["samples"]["ttft"]
