"""Calibration files, the cost-model knobs they set, where they are accepted, and the pieces of the fit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llmsched.bench.calibrate import gap_iterations, iteration_gaps, replay_of, simulate_replay
from llmsched.bench.calibrate_metrics import ITER, IterationMix, Window, parse_histograms, sample_windows
from llmsched.cli import app
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.emulator import EmulatorServer
from llmsched.model import BatchStats, build_cost_model
from llmsched.model.calibration import (
    KNOBS,
    Calibration,
    CalibrationError,
    load_calibration,
    save_calibration,
)
from llmsched.policies.instance.pinned import Pinned
from llmsched.sim.config import SimConfig
from llmsched.sim.run import simulate
from llmsched.workload.traces.record import read_recording

runner = CliRunner()
PREFILL = BatchStats(prefill_tokens=4096, prefill_pairs=4096 * 4097 / 2, prefill_seqs=1)
DECODE = BatchStats(decode_tokens=8, kv_tokens=8 * 1000)


def test_every_calibration_key_is_a_cost_model_knob() -> None:
    values = {"attn_flops_eff": 0.5, "attn_bw_eff": 0.7, "custom_ar_max_bytes": 1e6}
    cal = Calibration(**{k: values.get(k, 1e-4) for k in KNOBS})
    m = build_cost_model("qwen3-30b-a3b", "h100", tp=2, num_gpus=4, **cal.knobs())
    assert m.seq_overhead_s == 1e-4 and m.attn_bw_eff == 0.7 and m.custom_ar_max_bytes == 1e6
    assert m.step_time(DECODE, 0) > build_cost_model("qwen3-30b-a3b", "h100", tp=2, num_gpus=4).step_time(DECODE, 0)


def test_defaults_preserve_the_cost_model_exactly() -> None:
    a, b = build_cost_model("llama-3.1-8b", "h100"), build_cost_model("llama-3.1-8b", "h100", compute_scale=1.0,
                                                                        bandwidth_scale=1.0, step_overhead_s=1e-3)
    for bs in (PREFILL, DECODE):
        assert a.step_time(bs, 0.0) == b.step_time(bs, 0.0)


def test_knobs_move_the_parts_they_name() -> None:
    base = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.0)
    slow_c = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.0, compute_scale=0.5)
    slow_b = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.0, bandwidth_scale=0.5)
    # a long prefill is compute bound, a small decode batch memory bound
    assert slow_c.step_time(PREFILL, 0) / base.step_time(PREFILL, 0) == pytest.approx(2.0, rel=0.1)
    assert slow_c.step_time(DECODE, 0) / base.step_time(DECODE, 0) < 1.1
    # The bandwidth-bound part of the decode step (its time above the same model at unlimited bandwidth) doubles;
    # kernel floors (GEMM, elementwise, decode attention's own) and the per-sequence CPU term do not move.
    free_b = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.0, bandwidth_scale=1e9).step_time(DECODE, 0)
    assert (slow_b.step_time(DECODE, 0) - free_b) / (base.step_time(DECODE, 0) - free_b) == pytest.approx(2.0, rel=0.1)
    # decode attention streams KV at its own fitted efficiency (attn_bw_eff): bandwidth_scale scales it too
    # (per KV token read: the floors and the CTA-round latency of 8 sequences cancel)
    def per_kv(m: object) -> float:
        return float(m.decode_attention_time(8, 16000) - m.decode_attention_time(8, 8000))  # type: ignore[attr-defined]

    assert per_kv(slow_b) == pytest.approx(2.0 * per_kv(base), rel=1e-9)
    over = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.004)
    assert over.step_time(DECODE, 0) - base.step_time(DECODE, 0) == pytest.approx(0.004)
    with pytest.raises(ValueError, match="compute_scale"):
        build_cost_model("llama-3.1-8b", "h100", compute_scale=0.0)


@pytest.mark.parametrize("ext", [".json", ".yaml"])
def test_calibration_file_round_trip(tmp_path: Path, ext: str) -> None:
    cal = Calibration(step_overhead_s=0.003, compute_scale=0.8, meta={"source": "x"})
    save_calibration(cal, tmp_path / f"c{ext}")
    back = load_calibration(tmp_path / f"c{ext}")
    assert back == cal and back.knobs() == {"step_overhead_s": 0.003, "compute_scale": 0.8}


def test_calibration_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("step_overhead_s: 0.002\ncompute_scael: 0.5\n")
    with pytest.raises(CalibrationError, match=r"a.yaml: compute_scael: unknown key; known: step_overhead_s"):
        load_calibration(tmp_path / "a.yaml")
    (tmp_path / "b.json").write_text('{"bandwidth_scale": -1}')
    with pytest.raises(CalibrationError, match=r"b.json: bandwidth_scale: Input should be greater than 0"):
        load_calibration(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{oops")
    with pytest.raises(CalibrationError, match=r"c.json:1: invalid JSON"):
        load_calibration(tmp_path / "c.json")


@pytest.mark.parametrize("knob", ["step_overhead_s", "compute_scale", "bandwidth_scale"])
@pytest.mark.parametrize("value", [".inf", ".nan"])
def test_calibration_knobs_must_be_finite(tmp_path: Path, knob: str, value: str) -> None:
    """`.inf` passed ge=0 / gt=0 (every step time infinite); it is now an error naming the file and the knob."""
    (tmp_path / "cal.yaml").write_text(f"{knob}: {value}\n")
    with pytest.raises(CalibrationError, match=rf"cal.yaml: {knob}: Input should be a finite number"):
        load_calibration(tmp_path / "cal.yaml")


def test_calibration_file_not_utf8_names_the_file(tmp_path: Path) -> None:
    """A byte that is not UTF-8 is a CalibrationError naming the file, not a bare UnicodeDecodeError."""
    (tmp_path / "cal.yaml").write_bytes(b"compute_scale: 0.5  # \xff\n")
    with pytest.raises(CalibrationError, match=r"cal.yaml: not UTF-8 text \(invalid start byte at byte 22\)"):
        load_calibration(tmp_path / "cal.yaml")


def test_simulation_uses_the_calibration() -> None:
    cfg = SimConfig(workload={"kind": "synthetic", "name": "chat", "rate": 5, "num_requests": 60})
    plain = simulate(cfg)
    slow = simulate(cfg.model_copy(update={"calibration": Calibration(bandwidth_scale=0.5)}))
    assert slow["tpot_s"]["mean"] > 1.5 * plain["tpot_s"]["mean"]
    assert slow["simulated"]["calibration"] == {"bandwidth_scale": 0.5} and "calibration" not in plain["simulated"]


def test_cli_accepts_calibration_on_simulate_and_rejects_a_bad_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("bandwidth_scale: 0.5\n")
    bad.write_text("speed: 2\n")
    args = ["simulate", "--synthetic", "chat", "--num-requests", "30", "--json"]
    r = runner.invoke(app, [*args, "--calibration", str(good)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["simulated"]["calibration"] == {"bandwidth_scale": 0.5}
    r = runner.invoke(app, [*args, "--calibration", str(bad)])
    assert r.exit_code == 2 and "bad.yaml:speed:unknown key" in " ".join(r.output.split()).replace(": ", ":")


def test_simulate_rejects_an_infinite_knob(tmp_path: Path) -> None:
    """`simulate --calibration` with `step_overhead_s: .inf` exits 2 naming the knob; it printed `"mean": Infinity`
    (not JSON) and exited 0."""
    (tmp_path / "cal.yaml").write_text("step_overhead_s: .inf\n")
    r = runner.invoke(app, ["simulate", "--num-requests", "5", "--calibration", str(tmp_path / "cal.yaml"), "--json"])
    assert r.exit_code == 2 and "Infinity" not in r.output, r.output[-300:]
    assert "cal.yaml: step_overhead_s: must be a finite number" in " ".join(r.output.split())


def test_emulate_rejects_a_bad_calibration_file_by_key(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text('{"step_overhead": 0.05}')
    r = runner.invoke(app, ["emulate", "--calibration", str(tmp_path / "d.json")])
    assert r.exit_code == 2 and "step_overhead: unknown key" in " ".join(r.output.split())


def test_pinned_router_follows_the_assignment_and_avoids_unhealthy() -> None:
    snaps = [InstanceSnapshot(i, 0.0, 0, 0, 0.0, 10, 10, 0, healthy=(i != 2)) for i in range(3)]
    r = Pinned(assignment=[2, 0, 1])
    assert [r.route(Request(i, 0.0, 1, 1), snaps, 0.0) for i in (1, 2)] == [0, 1]
    assert r.route(Request(0, 0.0, 1, 1), snaps, 0.0) in (0, 1)  # pinned to an unhealthy one: moved
    assert r.decisions["unpinned"] == 1


def test_emulator_exports_the_histograms_calibration_reads() -> None:
    async def main() -> tuple[str, int]:
        srv = EmulatorServer(speed=50.0)
        url = await srv.start()
        import aiohttp

        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.post(url + "/v1/completions", json={"prompt": "hello " * 40, "max_tokens": 5}) as r:
                    assert r.status == 200
            async with s.get(url + "/metrics") as r:
                text = await r.text()
        steps = srv.engine.stats.steps
        await srv.stop()
        return text, steps

    text, steps = asyncio.run(main())
    h = parse_histograms(text)
    assert h["vllm:iteration_tokens_total"].count == steps
    assert h["vllm:request_prompt_tokens"].count == 3 and h["vllm:request_prompt_tokens"].mean == 60
    assert h["vllm:request_generation_tokens"].sum == 15
    assert h["vllm:request_time_per_output_token_seconds"].count == 3


def test_metrics_windows_rebuild_the_iterations_an_emulator_ran() -> None:
    """Reads of a loaded emulator's /metrics (virtual clock): the iterations rebuilt from the histograms and gauges,
    priced by the emulator's own cost model, add up to the observed inter-token sum; a model twice as slow does
    not."""
    from llmsched.bench.replay_client import prompt_text
    from llmsched.bench.virtual_loop import run_virtual

    truth = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.004, compute_scale=0.6, bandwidth_scale=0.7)

    async def main() -> list[Window]:
        import aiohttp

        srv = EmulatorServer(cost=truth)
        url = await srv.start()
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> None:
                await asyncio.sleep(0.02 * i)
                body = {"prompt": prompt_text(i, 100 + 50 * (i % 7)), "max_tokens": 150}  # no shared prefix
                async with s.post(url + "/v1/completions", json=body) as r:
                    assert r.status == 200
                    await r.read()

            async def reads() -> list[Window]:
                await asyncio.sleep(0.8)
                return await sample_windows([url], 2.4, scrapes=4)  # over HTTP, as `--from-metrics` reads

            *_, wins = await asyncio.gather(*(one(i) for i in range(200)), reads())
        await srv.stop()
        return wins

    wins = run_virtual(main())
    assert len(wins) == 3 and all(w.start["kv_tokens"] > 0 for w in wins)
    slow_model = build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.008, compute_scale=0.3, bandwidth_scale=0.35)
    for w in wins:
        mx = IterationMix.of(w)
        assert float(mx.count.sum()) == w.h[ITER].count  # every iteration of the window is rebuilt
        # the rebuilt iterations hold exactly the tokens the histogram summed, prefill chunks included
        assert float(np.sum(mx.count * (mx.prefill + mx.decodes))) == pytest.approx(w.h[ITER].sum)
        assert float(np.sum(mx.count * mx.prefill)) > 0
        s, busy = mx.predict(truth)
        slow, _ = mx.predict(slow_model)
        print("rebuilt / observed inter-token sum", s / mx.itl_sum, "slow", slow / mx.itl_sum, "busy", busy / mx.seconds)
        assert s / mx.itl_sum == pytest.approx(1.0, abs=0.1) and slow / mx.itl_sum > 1.6 and busy / mx.seconds < 1.15


TRUTH = {"step_overhead_s": 0.004, "compute_scale": 0.6, "bandwidth_scale": 0.7}
MOE, MOE_TRUTH = "qwen3-30b-a3b", {**TRUTH, "expert_scale": 0.5}


def _recording(tmp_path: Path, model: str = "llama-3.1-8b", truth: dict[str, float] = TRUTH) -> Path:
    """A small recording made by the simulator itself (the emulator's engine at known knobs)."""
    rng = np.random.default_rng(1)
    n = 120
    t = np.cumsum(rng.exponential(0.08, n))
    p, o = rng.integers(100, 2000, n), rng.integers(20, 200, n)
    rows = [{"arrival": float(t[i]), "prompt_tokens": int(p[i]), "output_tokens": int(o[i]), "backend": i % 2,
             "ttft": 1.0, "e2e": 2.0, "status": 200} for i in range(n)]
    head = {"llmsched_record": 1, "recording": "x", "block_size": 16, "backends": ["a", "b"]}
    path = tmp_path / "sim.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [head, *rows]) + "\n")
    rp = replay_of(read_recording(path))
    ttft, tpot = simulate_replay(rp, model, "h100", None, truth)
    for r, a, b, k in zip(rows, ttft, tpot, rp.output, strict=True):
        r["ttft"], r["e2e"] = float(a), float(a + b * (k - 1))
    path.write_text("\n".join(json.dumps(x) for x in [head, *rows]) + "\n")
    return path


def test_iterations_replayed_between_events_match_the_step_counts_at_the_truth(tmp_path: Path) -> None:
    rp = replay_of(read_recording(_recording(tmp_path)))
    gaps, A, obs = iteration_gaps(rp)
    assert len(obs) == int(np.sum(rp.output > 1))  # every streamed request of 2+ tokens is an observation
    at_truth = A @ gap_iterations(gaps, build_cost_model("llama-3.1-8b", "h100", step_overhead_s=0.004,
                                                         compute_scale=0.6, bandwidth_scale=0.7))
    at_default = A @ gap_iterations(gaps, build_cost_model("llama-3.1-8b", "h100"))
    # the recording was made by the simulator at the truth: its iterations are reproduced almost exactly
    assert np.max(np.abs(at_truth / obs - 1)) < 0.001
    assert np.median(np.abs(at_default / obs - 1)) > 0.3


def test_calibrate_cli_fits_a_recording_and_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "fit.yaml"
    r = runner.invoke(app, ["calibrate", "--from-record", str(_recording(tmp_path)), "--out", str(out),
                            "--bootstrap", "20", "--refine-evals", "20"])
    assert r.exit_code == 0, r.output
    assert "95% CI" in r.output and "residual TPOT" in r.output
    cal = load_calibration(out)
    for k, v in cal.knobs().items():  # the file holds what was printed, with its interval
        assert f"{k:16s} {v:.6g}" in r.output and cal.meta["ci95"][k][0] <= cal.meta["ci95"][k][1]
    # The fit explains the recording: its TPOT residual is small and far below the shipped model's.
    assert cal.meta["residuals"]["tpot"]["mean_abs_rel_err"] < 0.03
    rp = replay_of(read_recording(tmp_path / "sim.jsonl"))
    _, tpot0 = simulate_replay(rp, "llama-3.1-8b", "h100", None, {})
    assert np.nanmean(np.abs(tpot0 / rp.tpot - 1)) > 0.3
    # Accuracy of the knobs themselves is the live test's claim (tests/test_calibrate_live.py); here the
    # compute scale, which prefill-heavy steps pin down, must come out within 10%.
    assert cal.compute_scale == pytest.approx(0.6, rel=0.1)


def test_calibrate_cli_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["calibrate"])
    assert r.exit_code == 2 and "exactly one of --from-record" in " ".join(r.output.split())
    r = runner.invoke(app, ["calibrate", "--from-record", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "no such file" in " ".join(r.output.split())
    r = runner.invoke(app, ["calibrate", "--from-record", str(tmp_path), "--out", "x.txt"])
    assert r.exit_code == 2 and ".json, .yaml or .yml" in " ".join(r.output.split())


def test_compare_trace_what_if_ends_with_a_recommendation(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"step_overhead_s": 0.004, "compute_scale": 0.6, "bandwidth_scale": 0.7, '
                                     '"meta": {"draws": [{"compute_scale": 0.61}, {"compute_scale": 0.59}]}}')
    r = runner.invoke(app, ["compare", "--trace", str(_recording(tmp_path)), "--calibration",
                            str(tmp_path / "c.json"), "--json", "--knob-draws", "1"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    rec = res["recommendation"]
    assert rec["label"] in {c["label"] for c in res["candidates"]}
    best = min(c["ttft_mean"] for c in res["candidates"])
    assert rec["ttft_mean"] == best and rec["gain_vs_recorded"] == pytest.approx(1 - best / res["baseline"]["ttft_mean"])
    assert "replayed exactly" in res["replayed_exactly"] and res["simulated"]["calibration"]["compute_scale"] == 0.6
    assert res["simulated"]["knob_draws"] == 2  # the estimate + the first of the file's draws


def test_compare_and_sweep_put_the_calibration_into_every_run(tmp_path: Path) -> None:
    from llmsched.bench.compare import prepare
    from llmsched.bench.plan import expand
    from llmsched.bench.scenario import builtin_names, load_scenario

    cal = Calibration(compute_scale=0.7)
    comp = prepare([builtin_names()[0]], quick=True, calibration=cal)
    assert comp.cells and all(c.config.calibration == cal for c in comp.cells)
    sc = load_scenario(builtin_names()[0]).with_calibration(cal)  # what `sweep --calibration` applies
    cells, caps = expand(sc)
    assert all(c.config.calibration == cal for c in cells) and all(c.calibration == cal for c in caps.values())
    (tmp_path / "bad.json").write_text('{"x": 1}')
    (tmp_path / "sweep.yaml").write_text(f"scenarios: [{builtin_names()[0]}]\nquick: true\n")
    r = runner.invoke(app, ["sweep", str(tmp_path / "sweep.yaml"), "--calibration", str(tmp_path / "bad.json"),
                            "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and "bad.json: x: unknown key" in " ".join(r.output.split())


def test_calibrate_says_which_knobs_the_data_did_not_pin_down() -> None:
    from llmsched.bench.calibrate_cli import identifiability_lines

    values = {"step_overhead_s": 0.004, "compute_scale": 0.6}
    tight = identifiability_lines(values, {"step_overhead_s": (0.0039, 0.0041), "compute_scale": (0.59, 0.61)},
                                  {"step_overhead_s~compute_scale": 0.3})
    assert not any("NOT IDENTIFIED" in x or "COLLINEAR" in x for x in tight)
    loose = identifiability_lines(values, {"step_overhead_s": (0.002, 0.007), "compute_scale": (0.59, 0.61)},
                                  {"step_overhead_s~compute_scale": -0.97})
    assert any(x.startswith("  NOT IDENTIFIED: step_overhead_s") for x in loose)
    assert not any("NOT IDENTIFIED: compute_scale" in x for x in loose)
    assert any("COLLINEAR: step_overhead_s and compute_scale" in x for x in loose)
    narrow = identifiability_lines(values, {"step_overhead_s": (0.0039, 0.0041), "compute_scale": (0.59, 0.61)},
                                   {"step_overhead_s~compute_scale": -0.97})
    assert not any("COLLINEAR" in x for x in narrow) and any("still separates them" in x for x in narrow)


def test_expert_scale_moves_only_the_routed_experts() -> None:
    base, slow = build_cost_model(MOE, "h100"), build_cost_model(MOE, "h100", expert_scale=0.5)
    n = np.array([1.0, 64.0, 4096.0])
    # the routed-expert part doubles, and nothing else of the step moves
    assert slow.routed_expert_time(n) == pytest.approx(2 * base.routed_expert_time(n), rel=1e-12)
    assert slow.token_time(n) - base.token_time(n) == pytest.approx(base.routed_expert_time(n), rel=1e-9)
    dense = build_cost_model("llama-3.1-8b", "h100", expert_scale=0.5)
    assert dense.step_time(DECODE, 0) == build_cost_model("llama-3.1-8b", "h100").step_time(DECODE, 0)
    with pytest.raises(ValueError, match="expert_scale"):
        build_cost_model(MOE, "h100", expert_scale=0.0)


def test_calibrate_fits_the_expert_knob_of_an_moe_preset(tmp_path: Path) -> None:
    out = tmp_path / "moe.json"
    r = runner.invoke(app, ["calibrate", "--from-record", str(_recording(tmp_path, MOE, MOE_TRUTH)), "--model", MOE,
                            "--out", str(out), "--bootstrap", "20", "--refits", "4"])
    assert r.exit_code == 0, r.output
    cal = load_calibration(out)
    assert set(cal.knobs()) == set(MOE_TRUTH) and "expert_scale" in r.output
    for k, v in MOE_TRUTH.items():  # every interval holds the truth (refits under 1 ms timing noise)
        lo, hi = cal.meta["ci95"][k]
        assert lo <= v <= hi, (k, lo, v, hi)
    # 120 requests at a light load (~15 decoding): overhead and compute are pinned down; bandwidth and the
    # expert kernels trade off (both price the weights each decode step reads), and the output says so
    for k in ("step_overhead_s", "compute_scale"):
        assert getattr(cal, k) == pytest.approx(MOE_TRUTH[k], rel=0.1)
        assert f"NOT IDENTIFIED: {k}" not in r.output
    assert "COLLINEAR: bandwidth_scale and expert_scale" in " ".join(r.output.split())


def test_what_if_on_an_moe_recording_compares_the_expert_placers(tmp_path: Path) -> None:
    from llmsched.bench.whatif import what_if
    from llmsched.policies.expert import EXPERT_PLACERS

    rec = _recording(tmp_path, MOE, MOE_TRUTH)
    res = what_if(rec, MOE, "h100", None, Calibration(**MOE_TRUTH), seeds=2, routers=("round-robin",),
                  policies=("fcfs",), expert_policy="eplb")
    assert res["simulated"]["expert_policy"] == "eplb" and "expert placer eplb" in res["baseline"]["label"]
    compared = {c["expert_policy"] for c in res["candidates"] if c["router"] == "pinned"}
    assert compared == set(EXPERT_PLACERS.names()) - {"eplb"}
    # expert routing is drawn: every run goes over the seeds, the baseline too
    assert res["baseline"]["seeds"] == 2 and all(c["seeds"] == 2 for c in res["candidates"])
    e = res["expert_recommendation"]
    assert e["ttft_mean"] == min([c["ttft_mean"] for c in res["candidates"] if c["router"] == "pinned"]
                                 + [res["baseline"]["ttft_mean"]])
    assert "expert routing is not recorded" in res["simulated_parts"]
    # runs differ by placer: the placers are really simulated, not the baseline repeated
    assert len({round(c["ttft_mean"], 9) for c in res["candidates"]}) > 1
    r = runner.invoke(app, ["compare", "--trace", str(rec), "--expert-policy", "eplb"])
    assert r.exit_code != 0 and "needs an MoE model" in " ".join(r.output.split())


def test_periodic_snapshots_fall_where_the_recording_puts_the_gateways_scrapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder's time 0 is the gateway's start (its first scrape); a replay starts at its first arrival, so
    the simulated scrapes must keep the recorded offset, not restart at the first arrival."""
    from llmsched.sim.cluster import Cluster

    seen: list[float] = []
    orig = Cluster._scrape_all

    def spy(self: Cluster, now: float) -> None:
        seen.append(now)
        orig(self, now)

    monkeypatch.setattr(Cluster, "_scrape_all", spy)
    rows = [{"arrival": a, "prompt_tokens": 50, "output_tokens": 5, "backend": 0, "ttft": 0.1, "e2e": 0.2,
             "status": 200} for a in (0.3, 0.9, 2.3)]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [{"llmsched_record": 1, "recording": "x", "block_size": 16,
                                                         "backends": ["a", "b"]}, *rows]) + "\n")
    rp = replay_of(read_recording(path))
    assert rp.origin == pytest.approx(0.3) and rp.arrival[0] == 0.0
    simulate_replay(rp, "llama-3.1-8b", "h100", None, {}, router="least-kv", metrics_interval_s=0.5)
    # the gateway scraped at 0, 0.5, 1.0, ... recorded time: -0.3, 0.2, 0.7, ... on the replay's clock
    assert seen[:4] == pytest.approx([0.0, 0.2, 0.7, 1.2])
    seen.clear()
    simulate_replay(rp, "llama-3.1-8b", "h100", None, {}, router="least-kv", metrics_interval_s=0.5,
                    scrape_phase_s=0.0)
    assert seen[:3] == pytest.approx([0.0, 0.5, 1.0])


def test_what_if_replays_every_run_at_the_calibrations_knob_draws(tmp_path: Path) -> None:
    """A calibration written by `calibrate` carries its refits' landing points (meta.draws): the what-if repeats
    each run at them, so its figures are means over the knobs the recording does not pin down."""
    from llmsched.bench.whatif import what_if

    rec = _recording(tmp_path)
    draws = [{**TRUTH, "compute_scale": 0.6 * f} for f in (0.9, 1.1)]
    point = what_if(rec, "llama-3.1-8b", "h100", None, Calibration(**TRUTH), seeds=1, routers=("round-robin",),
                    policies=("fcfs",))
    res = what_if(rec, "llama-3.1-8b", "h100", None, Calibration(**TRUTH, meta={"draws": draws}), seeds=1,
                  routers=("round-robin",), policies=("fcfs",))
    assert point["simulated"]["knob_draws"] == 1 and res["simulated"]["knob_draws"] == 3
    assert res["recommendation"]["knob_draws"] == 3 and res["baseline"]["seeds"] == 1
    # the draws are really replayed: the mean moves and the spread over them is no longer zero
    assert res["baseline"]["ttft_mean"] != point["baseline"]["ttft_mean"]
    assert res["recommendation"]["spread_over_seeds"] > 0 == point["recommendation"]["spread_over_seeds"]
    only = what_if(rec, "llama-3.1-8b", "h100", None, Calibration(**TRUTH, meta={"draws": draws}), seeds=1,
                   routers=("round-robin",), policies=("fcfs",), knob_draws=0)
    assert only["simulated"]["knob_draws"] == 1


def test_predicted_change_is_the_mean_over_the_knob_draws_with_its_spread(tmp_path: Path) -> None:
    from llmsched.bench.calibrate import predicted_change

    rp = replay_of(read_recording(_recording(tmp_path)))
    draws = [{**TRUTH, "step_overhead_s": 0.004 * f} for f in (1.0, 0.8, 1.2)]
    one = [predicted_change(rp, "llama-3.1-8b", "h100", None, [d], "least-requests")["mean"] for d in draws]
    pc = predicted_change(rp, "llama-3.1-8b", "h100", None, draws, "least-requests")
    assert pc["changes"] == pytest.approx(one) and pc["mean"] == pytest.approx(np.mean(one))
    assert pc["min"] == min(one) and pc["max"] == max(one) and pc["sd"] == pytest.approx(np.std(one, ddof=1))
    with pytest.raises(ValueError, match="at least one knob draw"):
        predicted_change(rp, "llama-3.1-8b", "h100", None, [], "least-requests")
    # scrape phases: one replay per draw x phase; a router reading snapshots sees them differ
    ph = predicted_change(rp, "llama-3.1-8b", "h100", None, draws[:2], "least-kv", scrape_phases=(0.0, 0.25),
                          metrics_interval_s=0.5)
    assert len(ph["changes"]) == 4 and len(set(ph["changes"])) > 2
