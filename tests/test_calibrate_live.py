"""Closed loop, no GPU: emulated engines with a perturbed cost model are the "real" backends with a known truth.

Two in-process `llmsched emulate` servers whose cost model has step overhead 4 ms, compute x0.6 and bandwidth
x0.7 run behind the gateway with `record` on; a client replays the first 400 Azure 2023 conversation requests
(tests/data, CC-BY-4.0) at 6x their rate, which queues. Everything runs on one event loop with a virtual clock
(`llmsched.bench.virtual_loop`): the HTTP path is real, but time only advances when every task waits on a
timer, so the figures do not depend on how loaded the machine is (measured in real time at speed-up on this
box they did not hold, see docs/calibration.md).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmsched.bench.calibrate import FREE, calibrate_from_record, predicted_change, simulate_replay
from llmsched.bench.calibrate_metrics import fit_metrics, windows_from_series
from llmsched.bench.replay_client import replay
from llmsched.bench.virtual_loop import run_virtual
from llmsched.emulator import EmulatorServer
from llmsched.gateway.config import build_config
from llmsched.gateway.server import Gateway
from llmsched.model import build_cost_model
from llmsched.workload.traces.azure import load_azure

TRUTH = {"step_overhead_s": 0.004, "compute_scale": 0.6, "bandwidth_scale": 0.7}
MODEL, GPU = "llama-3.1-8b", "h100"
FIXTURE = Path(__file__).parent / "data" / "azure_conv_first700.csv"
N, RATE_SCALE = 400, 6.0
SCRAPES = 11


def _rows() -> list[tuple[float, int, int]]:
    cols = load_azure(FIXTURE)
    t = cols.arrival - cols.arrival.min()
    return [(float(a) / RATE_SCALE, int(p), int(o)) for a, p, o in zip(t[:N], cols.prompt[:N], cols.output[:N],
                                                                        strict=True)]


def live_run(tmp: Path, router: str, name: str, router_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """One replay through gateway + 2 emulators; returns the recording path, client outcomes and /metrics
    pages of each emulator sampled over the middle of the arrivals."""
    rows = _rows()
    rec = tmp / f"{name}.jsonl"

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        emus = [EmulatorServer(MODEL, GPU, cost=build_cost_model(MODEL, GPU, **TRUTH), token_window_s=0.5)
                for _ in range(2)]
        urls = [await e.start() for e in emus]
        cfg = build_config({"backends": urls, "router": {"name": router, "params": router_params or {}}, "record": {"path": str(rec)}})
        gw = Gateway(cfg)
        t0 = loop.time()
        gw.now = lambda: loop.time() - t0  # type: ignore[method-assign]  # the gateway's clock on the loop's
        assert gw.recorder is not None
        gw.recorder.t0 = 0.0
        url = await gw.start()
        span = rows[-1][0]

        async def sample() -> list[tuple[float, list[str]]]:
            """Every emulator's /metrics page at 11 instants over the middle 70% of the arrivals."""
            await asyncio.sleep(0.2 * span)
            pages = []
            for k in range(SCRAPES):
                if k:
                    await asyncio.sleep(0.7 * span / (SCRAPES - 1))
                pages.append((loop.time(), [e.metrics.render().decode() for e in emus]))
            return pages

        outcomes, pages = await asyncio.gather(replay(url, rows), sample())
        await gw.stop()
        for e in emus:
            await e.stop()
        return {"record": rec, "outcomes": outcomes, "pages": pages}

    return run_virtual(main())


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return live_run(tmp_path_factory.mktemp("live"), "round-robin", "rr")


@pytest.fixture(scope="module")
def fitted(recorded: dict[str, Any]) -> Any:
    return calibrate_from_record(recorded["record"], MODEL, GPU, bootstrap=100, refits=4)


def test_live_replay_answers_every_request(recorded: dict[str, Any]) -> None:
    assert [o.status for o in recorded["outcomes"]] == [200] * N
    assert sum(1 for _ in recorded["record"].open()) == N + 1  # header + one line per request


def test_calibrate_from_record_recovers_each_perturbed_value_within_10pct(fitted: Any) -> None:
    fit, rp = fitted
    assert rp.notes["replayed"] == N
    errs = {k: fit.values[k] / TRUTH[k] - 1 for k in FREE}
    print("truth", TRUTH, "fitted", fit.values, "errors", errs, "ci", fit.ci, "residuals", fit.residuals)
    for k in FREE:
        assert abs(errs[k]) <= 0.10, (k, fit.values[k], TRUTH[k])


def test_replay_with_fitted_calibration_reproduces_observed_latency_within_10pct(fitted: Any) -> None:
    fit, rp = fitted
    # No `ttft_offset_s` added: it is fitted as the mean gap, so adding it would match the mean by construction
    # (on the virtual clock the gateway-to-engine hop takes no time anyway).
    ttft, tpot = simulate_replay(rp, MODEL, GPU, None, fit.values)
    m = np.isfinite(rp.ttft)
    print("ttft_offset_s", fit.ttft_offset_s)
    for name, sim, obs in (("TTFT mean", ttft[m].mean(), rp.ttft[m].mean()),
                           ("TTFT p90", np.percentile(ttft[m], 90), np.percentile(rp.ttft[m], 90)),
                           ("TPOT mean", np.nanmean(tpot), np.nanmean(rp.tpot))):
        print(name, "simulated", sim, "observed", obs)
        assert abs(sim / obs - 1) <= 0.10, (name, sim, obs)


@pytest.mark.parametrize("router", ["random", "least-kv", "lmetric"])
def test_predicted_change_of_mean_ttft_for_another_router_matches_a_live_run(
    router: str, recorded: dict[str, Any], fitted: Any, tmp_path: Path
) -> None:
    """Recorded with round robin; predicted for `router` from the recording (same arrivals, snapshots refreshed
    every 0.5 s where the recording puts the gateway's scrapes: its time 0 is the gateway's first scrape, the
    first request came 50 ms later); then measured live through the gateway. A replay is chaotic (knobs moved
    by 1% spread lmetric's -8 ms change over -3.6..-9.4 ms), so the prediction is the mean over the fit's knob
    draws (the estimate and its refits), with their spread."""
    fit, rp = fitted
    params = {"seed": 0} if router == "random" else {}
    pc = predicted_change(rp, MODEL, GPU, None, fit.knob_draws(), router, params, metrics_interval_s=0.5)
    live = live_run(tmp_path, router, router, params)
    measured_base = np.nanmean([o.ttft for o in recorded["outcomes"]])
    measured = np.nanmean([o.ttft for o in live["outcomes"]])
    d_pred, d_live = pc["mean"], measured - measured_base
    print(router, "predicted change", d_pred, "over", len(pc["changes"]), "draws: min", pc["min"], "max", pc["max"],
          "sd", pc["sd"], "measured change", d_live)
    assert len(pc["changes"]) == len(fit.knob_draws()) > 1
    assert abs(d_pred - d_live) <= 0.15 * abs(d_live), (d_pred, d_live)


@pytest.fixture(scope="module")
def metrics_fit(recorded: dict[str, Any]) -> dict[str, Any]:
    res = fit_metrics(windows_from_series(recorded["pages"]), MODEL, GPU)
    errs = {k: res["values"][k] / TRUTH[k] - 1 for k in FREE}
    print("truth", TRUTH, "fitted", res["values"], "errors", errs, "ci", res["ci"], "residuals", res["residuals"])
    return res


def test_calibrate_from_metrics_recovers_compute_and_bandwidth_within_15pct(metrics_fit: dict[str, Any]) -> None:
    for k in ("compute_scale", "bandwidth_scale"):
        assert abs(metrics_fit["values"][k] / TRUTH[k] - 1) <= 0.15, (k, metrics_fit["values"][k], TRUTH[k])


@pytest.mark.xfail(strict=True, reason="not reached: the fixed step overhead and the weight reads are both a time per "
                   "iteration, told apart only by the KV-read slope, which the metrics' factor-of-two buckets and "
                   "two gauges per window rebuild too roughly; measured -19.4% (compute +9.1%, bandwidth -7.7%) "
                   "(docs/calibration.md)")
def test_calibrate_from_metrics_recovers_the_step_overhead_within_15pct(metrics_fit: dict[str, Any]) -> None:
    v = metrics_fit["values"]["step_overhead_s"]
    assert abs(v / TRUTH["step_overhead_s"] - 1) <= 0.15, v


def test_calibrate_from_metrics_says_the_step_overhead_is_not_pinned_down(metrics_fit: dict[str, Any]) -> None:
    """What it cannot identify it must not present as known: the interval is wide and holds the truth."""
    lo, hi = metrics_fit["ci"]["step_overhead_s"]
    v = metrics_fit["values"]["step_overhead_s"]
    assert math.isfinite(v) and lo <= TRUTH["step_overhead_s"] <= hi and (hi - lo) / 2 > 0.10 * v
