"""`llmsched compare --trace REC [--calibration FILE]`: what other policies would have done on recorded traffic.

The recording is replayed in the simulator (calibrated cost model) on as many instances as it had backends:
first with the routing it recorded (every request pinned to its backend, fcfs), which is the simulator's
account of what happened; then with every candidate router x request policy. Replayed exactly: arrival
times, prompt lengths, prefix block hashes, output lengths. Simulated: every timing (queueing, batching,
TTFT, TPOT). Candidates that draw at random run once per seed. A replay is chaotic (knobs moved by 1% move
a change of a few ms by tens of percent), so with a calibration written by `calibrate` every run is repeated
at each of its knob draws (`meta.draws`: where the fit's refits landed, up to `knob_draws` of them) besides
the estimate; figures are means over seeds x draws, and the spread over them is reported.

MoE presets: every run prices the experts with the MoE model (imbalanced routing, an expert placer); the
recorded routing is replayed once more under every expert placer. Expert routing (which experts each token
picks) is not in a recording: it is drawn by the seeded synthetic routing model, so MoE runs go over the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmsched.bench.calibrate import Replay, replay_of, simulate_replay
from llmsched.model.calibration import Calibration
from llmsched.workload.traces.record import read_recording, rows_of_model

ROUTER_CANDIDATES = ("round-robin", "least-requests", "lmetric", "prefix", "sglang-cache-aware")
POLICY_CANDIDATES = ("fcfs", "sjf")
REPLAYED = "arrival times, prompt lengths, prefix block hashes and output lengths are replayed exactly"
SIMULATED = "all timing (queueing, batching, TTFT, TPOT) is simulated with the cost model"
SIMULATED_MOE = ("; expert routing is not recorded: each token's experts are drawn by the seeded synthetic routing "
                 "model, and expert placement is simulated by each placer")


@dataclass
class Row:
    label: str
    router: str
    request_policy: str
    runs: list[dict[str, float]]
    expert_policy: str | None = None

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
            routers: tuple[str, ...] = ROUTER_CANDIDATES, policies: tuple[str, ...] = POLICY_CANDIDATES,
            expert_policy: str | None = None, expert_placers: tuple[str, ...] | None = None,
            knob_draws: int = 4, served_model: str | None = None) -> dict[str, Any]:
    """`served_model`: the model whose rows to replay (required when the recording holds several); `knob_draws`:
    how many of the calibration's refit draws to replay besides its estimate (0: the estimate only);
    `expert_policy`: MoE only, the placer the recorded backends ran (the baseline's; default static);
    `expert_placers`: the placers compared on the recorded routing (default: every registered one)."""
    from llmsched.model import get_llm
    from llmsched.policies.expert import EXPERT_PLACERS
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES

    moe = get_llm(model).is_moe
    if expert_policy is not None and not moe:
        raise ValueError(f"--expert-policy {expert_policy!r} needs an MoE model; {model} is dense")
    base_expert = (expert_policy or "static") if moe else None
    placers = tuple(expert_placers or EXPERT_PLACERS.names()) if moe else ()
    for name in (base_expert, *placers):
        if name is not None:
            EXPERT_PLACERS.get(name)  # an unknown name: the registry's error, naming the choices
    rp = replay_of(rows_of_model(read_recording(path), served_model))
    knobs = cal.knobs() if cal is not None else {}
    draws = [knobs] + ([{**knobs, **d} for d in (cal.meta.get("draws") or [])[:knob_draws]] if cal is not None
                       else [])

    def runs(router: str, policy: str, expert: str | None) -> list[dict[str, float]]:
        random = moe or any("seed" in reg.get(n).Params.model_fields
                            for reg, n in ((ROUTERS, router), (REQUEST_POLICIES, policy)) if n != "pinned")
        return [_summary(*simulate_replay(rp, model, gpu, tp, k, router=router, request_policy=policy,
                                          seed=s, with_e2e=True, expert_policy=expert))
                for k in draws for s in range(seeds if random else 1)]

    tag = f", expert placer {base_expert}" if moe else ""
    base = Row(f"as recorded (pinned routing, fcfs{tag})", "pinned", "fcfs", runs("pinned", "fcfs", base_expert),
               base_expert)
    rows = [Row(f"{r} + {p}", r, p, runs(r, p, base_expert), base_expert) for r in routers for p in policies]
    experts = [Row(f"recorded routing + expert placer {e}", "pinned", "fcfs", runs("pinned", "fcfs", e), e)
               for e in placers if e != base_expert]
    b0, _ = base.stat("ttft_mean")

    def pick(cands: list[Row]) -> dict[str, Any]:
        best = min(cands, key=lambda r: r.stat("ttft_mean")[0])
        bt, spread = best.stat("ttft_mean")
        return {"label": best.label, "router": best.router, "request_policy": best.request_policy,
                "expert_policy": best.expert_policy, "ttft_mean": bt,
                "gain_vs_recorded": 1.0 - bt / b0 if b0 > 0 else 0.0, "spread_over_seeds": spread,
                "seeds": len(best.runs) // len(draws), "knob_draws": len(draws)}

    res: dict[str, Any] = {
        "recording": str(path), "served_model": served_model, "requests": rp.notes, "instances": rp.instances,
        "simulated": {"model": model, "gpu": gpu, "tp": tp, "calibration": knobs, "expert_policy": base_expert,
                      "knob_draws": len(draws)},
        "observed": observed(rp),
        "baseline": {"label": base.label, "seeds": len(base.runs) // len(draws), **{k: base.stat(k)[0] for k in base.runs[0]}},
        "candidates": [{"label": r.label, "router": r.router, "request_policy": r.request_policy,
                        "expert_policy": r.expert_policy, "seeds": len(r.runs) // len(draws), **{k: r.stat(k)[0] for k in r.runs[0]},
                        "ttft_mean_spread": r.stat("ttft_mean")[1]} for r in rows + experts],
        "recommendation": pick(rows + experts),
        "replayed_exactly": REPLAYED, "simulated_parts": SIMULATED + (SIMULATED_MOE if moe else ""),
    }
    if experts:
        res["expert_recommendation"] = pick(experts + [base])
    return res


def print_what_if(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console()
    s = res["simulated"]
    where = res["recording"] + (f" (model {res['served_model']})" if res.get("served_model") else "")
    t = Table(title=f"what-if on {where}: simulated, {res['instances']} x {s['model']} on {s['gpu']}"
                    f" (calibration {s['calibration'] or 'none: shipped fit'})", title_justify="left")
    for c in ("setting", "TTFT mean", "TTFT p90", "TPOT mean", "E2E mean", "seeds"):
        t.add_column(c, justify="left" if c == "setting" else "right")
    o = res["observed"]
    t.add_row("measured at the gateway", f"{o['ttft_mean'] * 1e3:.1f} ms", f"{o['ttft_p90'] * 1e3:.1f} ms",
              f"{o['tpot_mean'] * 1e3:.2f} ms", "", "")
    b = res["baseline"]
    t.add_row(b["label"], f"{b['ttft_mean'] * 1e3:.1f} ms", f"{b['ttft_p90'] * 1e3:.1f} ms",
              f"{b['tpot_mean'] * 1e3:.2f} ms", f"{b['e2e_mean']:.2f} s", str(b["seeds"]))
    for c in res["candidates"]:
        t.add_row(c["label"], f"{c['ttft_mean'] * 1e3:.1f} ms", f"{c['ttft_p90'] * 1e3:.1f} ms",
                  f"{c['tpot_mean'] * 1e3:.2f} ms", f"{c['e2e_mean']:.2f} s", str(c["seeds"]))
    out.print(t)
    r = res["recommendation"]
    out.print(f"recommendation: {r['label']}: simulated mean TTFT {r['ttft_mean'] * 1e3:.1f} ms, "
              f"{r['gain_vs_recorded']:+.1%} lower than the recorded routing replayed "
              f"(spread over {r['seeds']} seed(s) x {r['knob_draws']} knob draw(s): "
              f"{r['spread_over_seeds'] * 1e3:.2f} ms).")
    e = res.get("expert_recommendation")
    if e:
        out.print(f"expert placers on the recorded routing: best {e['expert_policy']}: simulated mean TTFT "
                  f"{e['ttft_mean'] * 1e3:.1f} ms, {e['gain_vs_recorded']:+.1%} lower than the recorded placer "
                  f"(spread over {e['seeds']} seed(s) x {e['knob_draws']} knob draw(s): "
                  f"{e['spread_over_seeds'] * 1e3:.2f} ms).")
    out.print(f"replayed exactly: {res['replayed_exactly']}; {res['simulated_parts']}.")
