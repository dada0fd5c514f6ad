"""The `llmsched simulate` command: its JSON contract and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
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
    assert r.exit_code == 2 and "not found" in r.output and "builtin:sample" in r.output
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


# --- errors: one line naming the flag, for every command ------------------------------------------------

BAD_INPUTS = [
    (["simulate", "--rate", "0"], "--rate: must be greater than 0"),
    (["simulate", "--instances", "0"], "'--instances': must be greater than or equal to 1"),
    (["simulate", "--rate-scale", "0"], "--rate-scale: must be greater than 0"),
    (["simulate", "--num-requests", "0"], "'--num-requests': must be greater than or equal to 1"),
    (["simulate", "--max-num-seqs", "0"], "'--max-num-seqs': must be greater than or equal to 1"),
    (["simulate", "--seed", "-1"], "'--seed': must be greater than or equal to 0"),
    (["simulate", "--engine", "vlm", "--num-requests", "5"], "--engine: must be 'llmsched' or 'vllm'"),
    (["simulate", "--request-policy", "sfj", "--num-requests", "5"], "unknown request policy 'sfj' (did you mean 'sjf'?)"),
    (["simulate", "--gpu", "h10", "--num-requests", "5"], "unknown GPU preset 'h10' (did you mean 'h100'?)"),
    (["simulate", "--synthetic", "mixd"], "unknown generator 'mixd' (did you mean 'mixed'?)"),
    (["simulate", "--trace", "builtin:sampel"], "did you mean builtin:sample?"),
    (["simulate", "--rat", "3"], "No such option: --rat"),
    (["compare", "--jobs", "0"], "'--jobs': must be greater than or equal to 1"),
    (["compare", "--scenario", "defualt"], "unknown scenario 'defualt' (did you mean 'default'?)"),
    (["compare", "--scenario", "prefix", "--traces", "/no/such/traces"], "'--traces': dir '/no/such/traces' does not"),
    (["sweep", "nope.yaml", "--jobs", "0"], "'--jobs': must be greater than or equal to 1"),
    (["sweep", "nope.yaml"], "nope.yaml: cannot read"),
    (["emulate", "--model", "llama3x", "--port", "0"], "unknown model preset 'llama3x'"),
    # (the bad preset after it keeps a regression from starting a server that waits for a signal)
    (["emulate", "--max-model-len", "0", "--model", "llama3x"], "'--max-model-len': must be greater than or equal to 1"),
    (["emulate", "--max-model-len", "-5", "--model", "llama3x"], "'--max-model-len': must be greater than or equal to 1"),
    (["serve", "--router", "lmetirc", "--emulated", "1"], "unknown router policy 'lmetirc' (did you mean 'lmetric'?)"),
]


def test_bad_inputs_give_one_line_naming_the_flag() -> None:
    for args, expected in BAD_INPUTS:
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), (args, r.stderr)
        assert expected in lines[0], (args, lines[0])
        assert "Traceback" not in r.output and "pydantic.dev" not in r.output


def test_empty_workloads_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "head.csv").write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    for name in ("empty.jsonl", "head.csv"):
        r = runner.invoke(app, ["simulate", "--trace", str(tmp_path / name)])
        assert r.exit_code == 2 and "the workload is empty" in r.stderr, r.output
    r = runner.invoke(app, ["simulate", "--trace", str(tmp_path)])
    assert r.exit_code == 2 and "is a directory" in r.stderr


def test_builtin_traces_run_and_are_listed() -> None:
    r = runner.invoke(app, ["simulate", "--trace", "builtin:azure-code", "--num-requests", "30", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["completed"] == 30
    wl = res["simulated"]["workload"]
    assert wl["kind"] == "trace" and wl["name"] == "builtin:azure-code" and wl["num_requests"] == 30
    assert res["simulated"]["engine"]["max_num_seqs"] == 256 and res["simulated"]["engine"]["enable_prefix_caching"]
    assert res["simulated"]["llmsched_version"] and "workload_wall_s" in res and "load_s" not in res
    listed = runner.invoke(app, ["traces"]).stdout
    for name in ("builtin:azure-conv", "builtin:azure-code", "builtin:mooncake-conv", "builtin:sample"):
        assert name in listed


def test_prefix_caching_flag_pair_and_version() -> None:
    args = ["simulate", "--synthetic", "prefix-heavy", "--num-requests", "60", "--json"]
    on = json.loads(runner.invoke(app, args).stdout)
    off = json.loads(runner.invoke(app, [*args, "--no-prefix-caching"]).stdout)
    assert on["prefix_hit_rate"] > 0 and off["prefix_hit_rate"] == 0
    assert off["simulated"]["engine"]["enable_prefix_caching"] is False
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("llmsched ")


def test_help_lists_match_the_registries() -> None:
    from llmsched import cli
    from llmsched.policies.expert import EXPERT_PLACERS
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES
    from llmsched.workload.synthetic import GENERATORS
    from llmsched.workload.traces import builtin_names

    assert ", ".join(GENERATORS.names()) == cli.GENERATOR_NAMES
    assert ", ".join(REQUEST_POLICIES.names()) == cli.REQUEST_POLICY_NAMES
    assert ", ".join(ROUTERS.names()) == cli.ROUTER_NAMES
    assert ", ".join(EXPERT_PLACERS.names()) == cli.EXPERT_PLACER_NAMES
    assert ", ".join(sorted(f"builtin:{n}" for n in builtin_names())) == cli.TRACE_NAMES
    text = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "220"}).stdout
    assert "--no-prefix-caching" in text and "--no-no-prefix" not in text and "<bool>" not in text


@pytest.mark.parametrize(("args", "heavy"), [
    (["--help"], ("numpy", "pydantic", "matplotlib", "aiohttp", "llmsched.sim.run", "optuna",
                  "scipy")),
    (["presets"], ("matplotlib", "aiohttp", "llmsched.sim.run", "llmsched.bench.report", "optuna", "scipy")),
])
def test_help_and_presets_import_no_heavy_module(args: list[str], heavy: tuple[str, ...]) -> None:
    import subprocess
    import sys

    code = (f"import sys; from llmsched.cli import app\ntry:\n    app({args!r})\nexcept SystemExit:\n    pass\n"
            f"print('HEAVY', [m for m in {heavy!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out


def test_simulate_table_fits_80_columns() -> None:
    r = runner.invoke(app, ["simulate", "--synthetic", "mixed", "--rate", "1", "--num-requests", "120",
                            "--model", "llama-2-13b", "--gpu", "a100-80g"], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    assert "…" not in r.stdout and max(len(line) for line in r.stdout.splitlines()) <= 80
    assert "short" in r.stdout and "latencies in ms" in r.stdout
