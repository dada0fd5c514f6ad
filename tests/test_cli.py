"""The `llmsched simulate` command: its JSON contract and its errors."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from llmsched.cli import app

runner = CliRunner()
LATENCY = {"mean", "p50", "p90", "p99"}


def test_simulate_json_has_the_documented_fields() -> None:
    r = runner.invoke(app, ["simulate", "--synthetic", "mixed", "--num-requests", "200", "--rate", "2",
                            "--model", "llama-3.1-8b", "--instances", "2", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    for key in ("completed", "sim_duration_s", "wall_s", "output_throughput_tok_s", "request_throughput_rps",
                "prefix_hit_rate"):
        assert isinstance(res[key], int | float)
    assert res["completed"] == 200
    for key in ("ttft_s", "tpot_s", "e2e_s"):
        assert set(res[key]) == LATENCY
        assert res[key]["p50"] <= res[key]["p90"] <= res[key]["p99"]
    assert set(res["by_class"]) == {"short", "long"}
    assert sum(c["count"] for c in res["by_class"].values()) == 200
    assert res["simulated"]["model"] == "llama-3.1-8b" and res["simulated"]["instances"] == 2


def test_simulate_is_deterministic_by_seed() -> None:
    args = ["simulate", "--synthetic", "chat", "--num-requests", "150", "--rate", "20", "--json"]
    a = json.loads(runner.invoke(app, [*args, "--seed", "3"]).stdout)
    b = json.loads(runner.invoke(app, [*args, "--seed", "3"]).stdout)
    c = json.loads(runner.invoke(app, [*args, "--seed", "4"]).stdout)
    assert a["ttft_s"] == b["ttft_s"] and a["e2e_s"] == b["e2e_s"]
    assert a["e2e_s"] != c["e2e_s"]


def test_malformed_trace_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:50.9951690,abc,109\n")
    r = runner.invoke(app, ["simulate", "--trace", str(f), "--json"])
    assert r.exit_code == 2
    assert "bad.csv" in r.output and "3" in r.output


def test_unknown_policy_and_missing_trace_are_clear_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["simulate", "--num-requests", "10", "--request-policy", "nope"])
    assert r.exit_code == 2 and "unknown request policy 'nope'" in r.output
    r = runner.invoke(app, ["simulate", "--trace", str(tmp_path / "absent.csv")])
    assert r.exit_code == 2 and "not found" in r.output
    r = runner.invoke(app, ["simulate", "--num-requests", "10", "--router-params", "{oops"])
    assert r.exit_code == 2 and "not valid JSON" in r.output


def test_presets_lists_every_layer() -> None:
    r = runner.invoke(app, ["presets"])
    assert r.exit_code == 0
    for word in ("h100", "llama-3.1-8b", "qwen3-30b-a3b", "fcfs", "round-robin", "static"):
        assert word in r.output


def test_simulate_kv_capacity_override() -> None:
    args = ["simulate", "--synthetic", "chat", "--num-requests", "30", "--rate", "5", "--instances", "2", "--json"]
    r = runner.invoke(app, [*args, "--kv-capacity-tokens", "4096"])
    assert r.exit_code == 0, r.output
    assert {p["kv_blocks"] for p in json.loads(r.stdout)["per_instance"]} == {256}
    bad = runner.invoke(app, [*args, "--kv-capacity-tokens", "8"])
    assert bad.exit_code == 2 and "--kv-capacity-tokens" in bad.output
