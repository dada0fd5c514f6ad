"""Multi-model recordings: `serve --record` writes each row's model (its pool's id), the loader keeps it, and
`llmsched calibrate --from-record --served-model NAME` fits one model's rows (an error names the models when a
recording holds several and none is chosen)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest
from typer.testing import CliRunner

from llmsched.cli import app
from llmsched.core.types import Request
from llmsched.emulator import EmulatorServer
from llmsched.gateway.config import build_config
from llmsched.gateway.record import Recorder
from llmsched.gateway.server import Gateway, Outcome
from llmsched.model.calibration import load_calibration
from llmsched.workload.errors import WorkloadError
from llmsched.workload.traces.record import read_recording, rows_of_model
from tests.test_calibration import _recording


def _out(model: str | None, backend: int = 0) -> Outcome:
    out = Outcome("/v1/completions", 0.0)
    out.status, out.backend, out.ttft, out.e2e, out.tokens, out.model = 200, backend, 0.05, 0.5, 10, model
    return out


def test_recorder_writes_the_pool_id_and_the_loader_keeps_it(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "r.jsonl", 16, backends=["http://a", "http://b"], t0=0.0)
    for k, model in enumerate(("m1", "m2", "m1", "*", None)):
        rec.record(Request(k, 0.1 * k, 48, 10), _out(model, k % 2), None)
    rec.close()
    rows = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()[1:]]
    assert [r["model"] for r in rows] == ["m1", "m2", "m1", None, None]  # the unnamed pool: no model id
    r = read_recording(tmp_path / "r.jsonl")
    assert r.model == ["m1", "m2", "m1", None, None]
    m1 = rows_of_model(r, "m1")
    assert len(m1) == 2 and m1.arrival.tolist() == pytest.approx([0.0, 0.2]) and m1.model == ["m1", "m1"]
    m2 = rows_of_model(r, "m2")  # on backend 1 alone: renumbered 0, the header cut to it
    assert m2.backend.tolist() == [0] and m2.header["backends"] == ["http://b"]
    with pytest.raises(ValueError, match=r"several models \(m1, m2\); choose one with --served-model"):
        rows_of_model(r, None)
    with pytest.raises(ValueError, match=r"no row of model 'm3'; it holds: m1, m2"):
        rows_of_model(r, "m3")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"llmsched_record": 1}\n{"arrival": 0, "prompt_tokens": 4, "status": 200, "model": 3}\n')
    with pytest.raises(WorkloadError, match=r"bad.jsonl:2: model must be a string"):
        read_recording(bad)


async def test_a_two_model_gateway_records_each_rows_model(tmp_path: Path) -> None:
    emus = [EmulatorServer(speed=200.0, token_window_s=0.0, served_model_name=m) for m in ("alpha", "beta")]
    urls = [await e.start() for e in emus]
    gw = Gateway(build_config({"backends": urls, "record": {"path": str(tmp_path / "rec.jsonl")}}))
    await gw.start()
    try:
        async with aiohttp.ClientSession() as http:
            for m in ("alpha", "beta", "alpha"):
                async with http.post(gw.url + "/v1/completions", json={"model": m, "prompt": "x", "max_tokens": 2}) as r:
                    assert r.status == 200
    finally:
        await gw.stop()
        for e in emus:
            await e.stop()
    rec = read_recording(tmp_path / "rec.jsonl")
    assert rec.model == ["alpha", "beta", "alpha"] and rec.backend.tolist() == [0, 1, 0]


def _two_model_recording(tmp_path: Path) -> Path:
    """m1's rows: test_calibration's recording made by the simulator at known knobs, on backends 0-1; m2's rows
    on backends 2-3 with timings no knob of m1's cost model explains (10x slower)."""
    lines = _recording(tmp_path).read_text().splitlines()
    head, m1 = json.loads(lines[0]), [{**json.loads(x), "model": "m1"} for x in lines[1:]]
    head["backends"] = ["a", "b", "c", "d"]
    m2 = [{**r, "model": "m2", "backend": 2 + i % 2, "arrival": r["arrival"] + 0.01, "ttft": 10 * r["ttft"],
           "e2e": 10 * r["e2e"]} for i, r in enumerate(m1)]
    path = tmp_path / "two.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [head, *sorted(m1 + m2, key=lambda r: r["arrival"])]) + "\n")
    return path


def test_calibrate_from_a_multi_model_recording_needs_served_model_and_fits_its_rows(tmp_path: Path) -> None:
    path = _two_model_recording(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["calibrate", "--from-record", str(path)])
    assert r.exit_code == 2 and "several models (m1, m2)" in " ".join(r.output.split())
    r = runner.invoke(app, ["calibrate", "--from-record", str(path), "--served-model", "m3"])
    assert r.exit_code == 2 and "it holds: m1, m2" in " ".join(r.output.split())
    r = runner.invoke(app, ["calibrate", "--from-metrics", "http://x:1", "--served-model", "m1"])
    assert r.exit_code == 2 and "--served-model" in r.output
    out = tmp_path / "fit.json"
    r = runner.invoke(app, ["calibrate", "--from-record", str(path), "--served-model", "m1", "--out", str(out),
                            "--bootstrap", "20", "--refine-evals", "20"])
    assert r.exit_code == 0, r.output
    assert "fitted on 120 requests" in r.output
    cal = load_calibration(out)
    assert cal.meta["residuals"]["tpot"]["mean_abs_rel_err"] < 0.03  # m2's 10x rows would spoil it
    assert cal.compute_scale == pytest.approx(0.6, rel=0.1)


def test_simulate_and_compare_replay_one_model_of_a_multi_model_recording(tmp_path: Path) -> None:
    """A multi-model recording is refused by every replay unless a model is chosen (its models ran on different
    backends), and the chosen model's rows alone are replayed."""
    path = _two_model_recording(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["simulate", "--trace", str(path)])
    msg = " ".join(r.output.split())
    assert r.exit_code == 2 and "several models (m1, m2)" in msg and "--served-model NAME" in msg, r.output
    r = runner.invoke(app, ["simulate", "--trace", str(path), "--served-model", "m3"])
    assert r.exit_code == 2 and "it holds: m1, m2" in " ".join(r.output.split())
    r = runner.invoke(app, ["simulate", "--served-model", "m1"])
    assert r.exit_code == 2 and "--trace" in r.output
    r = runner.invoke(app, ["simulate", "--trace", "builtin:sample", "--served-model", "m1"])
    assert r.exit_code == 2 and "selects the rows of a `serve --record` recording" in " ".join(r.output.split())
    r = runner.invoke(app, ["simulate", "--trace", str(path), "--served-model", "m1", "--instances", "2", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["submitted"] == 120  # m1's rows only (m2 has as many)
    r = runner.invoke(app, ["compare", "--trace", str(path)])
    assert r.exit_code == 2 and "several models (m1, m2)" in " ".join(r.output.split())
    r = runner.invoke(app, ["compare", "--trace", str(path), "--served-model", "m2", "--knob-draws", "0", "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["served_model"] == "m2" and res["instances"] == 2  # m2's two backends, not all four
