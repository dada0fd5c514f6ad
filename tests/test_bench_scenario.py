"""Scenario files: validation errors name the file and the field; quick overrides; trace resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmsched.bench.scenario import ScenarioError, list_scenarios, load_scenario
from llmsched.bench.traces import ENV_VAR, resolve_traces

GOOD = {
    "name": "mine",
    "description": "a test scenario",
    "base": {"model": "llama-3.1-8b", "gpu": "h100", "instances": 2, "seed": 3},
    "workloads": [{"label": "chat", "kind": "synthetic", "name": "chat", "num_requests": 50}],
    "loads": [0.5, 1.0],
    "policies": [{"label": "a", "request": "fcfs", "router": "round-robin"},
                 {"label": "b", "request": "fcfs", "router": "round-robin", "overrides": {"instances": 3}}],
    "columns": ["ttft_mean:short", "e2e_p99", "output_throughput"],
    "quick": {"num_requests": 10, "loads": [0.9], "policies": ["a"]},
}


def write(tmp_path: Path, data: object, name: str = "sc.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_good_scenario_builds_every_config(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, GOOD))
    cfg = sc.config(sc.workloads[0], sc.policies[1])
    assert cfg.instances == 3 and cfg.seed == 3 and cfg.workload.num_requests == 50
    q = sc.with_quick()
    assert [p.label for p in q.policies] == ["a"] and q.loads == [0.9]
    assert q.workloads[0].num_requests == 10
    assert sc.with_seed(7).config(sc.workloads[0], sc.policies[0]).seed == 7


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"policies": [{"label": "a", "request": "fcfs", "routr": "x"}]}, "policies.0.routr"),
        ({"policies": [{"label": "a", "request": "no-such-policy"}]}, "unknown request policy 'no-such-policy'"),
        ({"policies": [{"label": "a", "router": "nope"}]}, "unknown router policy 'nope'"),
        ({"columns": ["ttft_p95"]}, "unknown column 'ttft_p95'"),
        ({"columns": ["output_throughput:short"]}, "not split by class"),
        ({"loads": [0.5, -1]}, "loads"),
        ({"base": {"instances": 0}}, "base.instances"),
        ({"base": {"workload": {}}}, "under `workloads:`"),
        ({"workloads": []}, "workloads"),
        ({"policies": [{"label": "a"}, {"label": "a"}]}, "duplicate policy set labels: a"),
        ({"quick": {"policies": ["zz"]}}, "quick.policies names unknown labels: zz"),
        ({"workloads": [{"label": "w", "kind": "synthetic", "rate": -2}]}, "workloads.0.rate"),
        ({"policies": [{"label": "a", "overrides": {"instances": -1}}]}, "policies.0 ('a') with workload 'chat'"),
    ],
)
def test_validation_errors_name_file_and_field(tmp_path: Path, patch: dict, needle: str) -> None:
    p = write(tmp_path, {**GOOD, **patch})
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    assert str(p) in str(e.value) and needle in str(e.value)


@pytest.mark.parametrize("load", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("where", ["loads", "quick.loads"])
def test_loads_must_be_finite(tmp_path: Path, load: float, where: str) -> None:
    """`loads: [.nan]` / `[.inf]` are refused at load time (NaN passed the old `x <= 0` test), in quick too."""
    patch = {"loads": [0.5, load]} if where == "loads" else {"quick": {**GOOD["quick"], "loads": [load]}}
    p = write(tmp_path, {**GOOD, **patch})
    with pytest.raises(ScenarioError, match=rf"{p.name}: {where}: every load must be finite and > 0"):
        load_scenario(p)


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nworkloads: [\n  - oops: : :\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_scenario(p)


def test_unknown_builtin_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="unknown scenario 'nosuch'; known: .*default"):
        load_scenario("nosuch")
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "absent.yaml")


def test_list_scenarios_has_descriptions() -> None:
    listed = dict(list_scenarios())
    assert {"default", "stack"} <= set(listed)
    assert all(desc for desc in listed.values())


def test_trace_resolution_and_skip_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {**GOOD, "workloads": [
        {"label": "present", "kind": "trace", "path": "sub/t.csv", "requires_trace": True},
        {"label": "absent", "kind": "trace", "path": "sub/none.csv", "requires_trace": True},
        {"label": "builtin", "kind": "trace", "path": "builtin:sample", "requires_trace": True},
    ]}
    sc = load_scenario(write(tmp_path, data))
    traces = tmp_path / "traces"
    (traces / "sub").mkdir(parents=True)
    (traces / "sub" / "t.csv").write_text("x\n")
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    out, skipped = resolve_traces(sc, traces)
    kept = out.workloads
    assert [w.label for w in kept] == ["present", "builtin"]
    assert kept[0].path == str((traces / "sub" / "t.csv").resolve())
    assert [s.workload for s in skipped] == ["absent"]
    assert "sub/none.csv not found" in skipped[0].reason and "--traces" in skipped[0].reason
    monkeypatch.setenv(ENV_VAR, str(traces))
    out, _ = resolve_traces(sc)
    assert out.workloads[0].path == str((traces / "sub" / "t.csv").resolve())


def test_builtin_traces_are_overridden_by_a_trace_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmsched.bench.traces import resolve_one

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_one("builtin:azure-conv") == "builtin:azure-conv"  # packaged copy, nothing beside the repo
    # the public release's layout, absent: its packaged copy stands in
    assert resolve_one("azure-2023/AzureLLMInferenceTrace_code.csv") == "builtin:azure-code"
    mine = tmp_path / "traces" / "azure-2023" / "AzureLLMInferenceTrace_conv.csv"
    mine.parent.mkdir(parents=True)
    mine.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n")
    assert resolve_one("builtin:azure-conv", tmp_path / "traces") == str(mine.resolve())
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "traces"))
    assert resolve_one("builtin:azure-conv") == str(mine.resolve())
    assert resolve_one("no/such.csv") is None
