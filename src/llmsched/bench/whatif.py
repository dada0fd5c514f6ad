"""`llmsched compare --trace REC [--calibration FILE]`: what other policies would have done on recorded traffic.

The recording is replayed in the simulator (calibrated cost model) on as many instances as it had backends:
first with the routing it recorded (every request pinned to its backend, fcfs), which is the simulator's
account of what happened; then with every candidate router x request policy. Replayed exactly: arrival
times, prompt lengths, prefix block hashes, output lengths. Simulated: every timing (queueing, batching,
TTFT, TPOT). Candidates that draw at random run once per seed; the spread over seeds is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmsched.bench.calibrate import Replay, replay_of, simulate_replay
from llmsched.model.calibration import Calibration
from llmsched.workload.traces.record import read_recording

ROUTER_CANDIDATES = ("round-robin", "least-requests", "lmetric", "prefix", "sglang-cache-aware")
POLICY_CANDIDATES = ("fcfs", "sjf")
REPLAYED = "arrival times, prompt lengths, prefix block hashes and output lengths are replayed exactly"
SIMULATED = "all timing (queueing, batching, TTFT, TPOT) is simulated with the cost model"


@dataclass
class Row:
    label: str
    router: str
    request_policy: str
    runs: list[dict[str, float]]

    def stat(self, key: str) -> tuple[float, float]:
        vals = np.array([r[key] for r in self.runs])
        return float(vals.mean()), float(vals.max() - vals.min())


def _summary(ttft: np.ndarray, tpot: np.ndarray, e2e: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(ttft)
    return {"ttft_mean": float(np.mean(ttft[ok])), "ttft_p90": float(np.percentile(ttft[ok], 90)),
            "tpot_mean": float(np.nanmean(tpot)), "e2e_mean": float(np.nanmean(e2e[np.isfinite(e2e)])),
            "rejected": int((~ok).sum())}


def observed(rp: Replay) -> dict[str, float]:
    """What the gateway measured (TTFT of streamed requests; includes the gateway-to-engine time)."""
    t = rp.ttft[np.isfinite(rp.ttft)]
    return {"ttft_mean": float(t.mean()) if len(t) else float("nan"),
            "ttft_p90": float(np.percentile(t, 90)) if len(t) else float("nan"),
            "tpot_mean": float(np.nanmean(rp.tpot))}


def what_if(path: Path, model: str, gpu: str, tp: int | None, cal: Calibration | None, seeds: int = 3,
            routers: tuple[str, ...] = ROUTER_CANDIDATES,
            policies: tuple[str, ...] = POLICY_CANDIDATES) -> dict[str, Any]:
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES

    rp = replay_of(read_recording(path))
    knobs = cal.knobs() if cal is not None else {}

    def runs(router: str, policy: str) -> list[dict[str, float]]:
        random = any("seed" in reg.get(n).Params.model_fields
                     for reg, n in ((ROUTERS, router), (REQUEST_POLICIES, policy)) if n != "pinned")
        return [_summary(*simulate_replay(rp, model, gpu, tp, knobs, router=router, request_policy=policy,
                                          seed=s, with_e2e=True)) for s in range(seeds if random else 1)]

    base = Row("as recorded (pinned routing, fcfs)", "pinned", "fcfs", runs("pinned", "fcfs"))
    rows = [Row(f"{r} + {p}", r, p, runs(r, p)) for r in routers for p in policies]
    best = min(rows, key=lambda r: r.stat("ttft_mean")[0])
    b0, _ = base.stat("ttft_mean")
    bt, spread = best.stat("ttft_mean")
    return {
        "recording": str(path), "requests": rp.notes, "instances": rp.instances,
        "simulated": {"model": model, "gpu": gpu, "tp": tp, "calibration": knobs},
        "observed": observed(rp),
        "baseline": {"label": base.label, **{k: base.stat(k)[0] for k in base.runs[0]}},
        "candidates": [{"label": r.label, "router": r.router, "request_policy": r.request_policy,
                        "seeds": len(r.runs), **{k: r.stat(k)[0] for k in r.runs[0]},
                        "ttft_mean_spread": r.stat("ttft_mean")[1]} for r in rows],
        "recommendation": {"label": best.label, "router": best.router, "request_policy": best.request_policy,
                           "ttft_mean": bt, "gain_vs_recorded": 1.0 - bt / b0 if b0 > 0 else 0.0,
                           "spread_over_seeds": spread, "seeds": len(best.runs)},
        "replayed_exactly": REPLAYED, "simulated_parts": SIMULATED,
    }


def print_what_if(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    s = res["simulated"]
    t = Table(title=f"what-if on {res['recording']}: simulated, {res['instances']} x {s['model']} on {s['gpu']}"
                    f" (calibration {s['calibration'] or 'none: shipped fit'})", title_justify="left")
    for c in ("setting", "TTFT mean", "TTFT p90", "TPOT mean", "E2E mean", "seeds"):
        t.add_column(c, justify="left" if c == "setting" else "right")
    o = res["observed"]
    t.add_row("measured at the gateway", f"{o['ttft_mean'] * 1e3:.1f} ms", f"{o['ttft_p90'] * 1e3:.1f} ms",
              f"{o['tpot_mean'] * 1e3:.2f} ms", "", "")
    b = res["baseline"]
    t.add_row(b["label"], f"{b['ttft_mean'] * 1e3:.1f} ms", f"{b['ttft_p90'] * 1e3:.1f} ms",
              f"{b['tpot_mean'] * 1e3:.2f} ms", f"{b['e2e_mean']:.2f} s", "1")
    for c in res["candidates"]:
        t.add_row(c["label"], f"{c['ttft_mean'] * 1e3:.1f} ms", f"{c['ttft_p90'] * 1e3:.1f} ms",
                  f"{c['tpot_mean'] * 1e3:.2f} ms", f"{c['e2e_mean']:.2f} s", str(c["seeds"]))
    out.print(t)
    r = res["recommendation"]
    out.print(f"recommendation: {r['label']}: simulated mean TTFT {r['ttft_mean'] * 1e3:.1f} ms, "
              f"{r['gain_vs_recorded']:+.1%} lower than the recorded routing replayed "
              f"(spread over {r['seeds']} seed(s): {r['spread_over_seeds'] * 1e3:.2f} ms).")
    out.print(f"replayed exactly: {res['replayed_exactly']}; {res['simulated_parts']}.")
