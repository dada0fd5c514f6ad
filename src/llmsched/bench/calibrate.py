"""`llmsched calibrate --from-record`: fit the cost model's knobs to what the real backends did.

The recording is replayed through the simulator with every request pinned to the backend it went to (the
`pinned` router), so the simulated engines run the batches the real ones ran; scipy's Nelder-Mead moves the knobs (in log space) to minimise the per-request relative errors
`log(simulated / observed)` of TTFT (streamed requests) and TPOT (outputs of 2+ tokens), each metric
weighted equally. One more free term, `ttft_offset_s`, is fitted alongside and reported but not written
to the calibration: the constant time between the gateway and the engine (HTTP hops, tokenisation) that
every observed TTFT holds and no step-time knob should absorb.

Confidence: a one-step (linearised) bootstrap: requests are resampled with replacement and each resample
takes one Gauss-Newton step from the optimum with the resampled residuals and Jacobian rows; the 2.5-97.5
percentiles of those steps are the 95% intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmsched.core.types import Request
from llmsched.model.calibration import Calibration
from llmsched.workload.traces.record import Recording, read_recording, record_hashes, rows_of_model

FREE = ("step_overhead_s", "compute_scale", "bandwidth_scale")
START = {"step_overhead_s": 1.0e-3, "compute_scale": 1.0, "bandwidth_scale": 1.0}
BOUNDS = {"step_overhead_s": (1e-5, 0.2), "compute_scale": (0.02, 20.0), "bandwidth_scale": (0.02, 20.0)}


@dataclass
class Replay:
    """A recording ready to be replayed: rows sorted by arrival, with what was observed of each."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    backend: np.ndarray
    hashes: list[tuple[int, ...] | None]
    ttft: np.ndarray  # observed, NaN where unknown
    tpot: np.ndarray  # observed, NaN where unknown
    instances: int
    notes: dict[str, int] = field(default_factory=dict)

    def requests(self) -> list[Request]:
        return [Request(i, t, p, o, h) for i, (t, p, o, h) in
                enumerate(zip(self.arrival.tolist(), self.prompt.tolist(), self.output.tolist(), self.hashes,
                              strict=True))]


def replay_of(rec: Recording, block_size: int = 16) -> Replay:
    """The answered requests of a recording (HTTP 200, known output length), sorted by arrival."""
    bs = rec.block_size
    if block_size % bs:
        raise ValueError(f"recorded at block size {bs}; the engine block size {block_size} must be a multiple")
    keep = np.flatnonzero(rec.ok & (rec.output > 0) & (rec.backend >= 0))
    keep = keep[np.argsort(rec.arrival[keep], kind="stable")]
    arrival = rec.arrival[keep] - (rec.arrival[keep].min() if len(keep) else 0.0)
    out = rec.output[keep]
    ttft = rec.ttft[keep]
    e2e = rec.e2e[keep]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(out > 1, (e2e - ttft) / (out - 1), np.nan)
    n_inst = max(len(rec.header.get("backends") or []), int(rec.backend.max()) + 1 if len(rec) else 1)
    return Replay(arrival, rec.prompt[keep], out, rec.backend[keep],
                  [record_hashes(rec.hashes[i], bs, block_size) for i in keep.tolist()], ttft, tpot, n_inst,
                  {"rows": len(rec), "replayed": len(keep), "not_replayed": len(rec) - len(keep)})


def simulate_replay(rp: Replay, model: str, gpu: str, tp: int | None, knobs: dict[str, float],
                    router: str = "pinned", router_params: dict[str, Any] | None = None,
                    engine: dict[str, Any] | None = None, seed: int = 0, request_policy: str = "fcfs",
                    with_e2e: bool = False, metrics_interval_s: float = 0.0) -> Any:
    """Simulated (TTFT, TPOT[, E2E]) per replayed request (NaN where the request was rejected)."""
    from llmsched.engine.config import EngineConfig
    from llmsched.engine.engine import Engine
    from llmsched.model import build_cost_model
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES
    from llmsched.sim.cluster import Cluster

    cfg = EngineConfig(**(engine or {}))
    pol_cls = REQUEST_POLICIES.get(request_policy)
    pol_params = {"seed": seed} if "seed" in pol_cls.Params.model_fields else {}
    engines = [Engine(build_cost_model(model, gpu, tp, **knobs), pol_cls(**pol_params), cfg,
                      instance=i, collect_tokens=False) for i in range(rp.instances)]
    params = dict(router_params or {})
    if router == "pinned":
        from llmsched.policies.instance.pinned import Pinned

        route = Pinned(assignment=rp.backend.tolist(), **params)
    else:
        fields = ROUTERS.get(router).Params.model_fields
        for k, v in (("seed", seed), ("block_size", cfg.block_size)):
            if k in fields:
                params.setdefault(k, v)
        route = ROUTERS.create(router, params)
    reqs = rp.requests()
    Cluster(engines, route, metrics_interval_s).run(reqs)
    ttft = np.array([r.first_token - r.arrival if r.finish >= 0 else np.nan for r in reqs])
    tpot = np.array([(r.finish - r.first_token) / (r.num_output - 1) if r.finish >= 0 and r.num_output > 1
                     else np.nan for r in reqs])
    if with_e2e:
        return ttft, tpot, np.array([r.finish - r.arrival if r.finish >= 0 else np.nan for r in reqs])
    return ttft, tpot


@dataclass
class Fit:
    values: dict[str, float]
    ci: dict[str, tuple[float, float]]
    residuals: dict[str, dict[str, float]]
    ttft_offset_s: float
    evaluations: int
    notes: dict[str, Any]

    def calibration(self, meta: dict[str, Any]) -> Calibration:
        return Calibration(**{k: float(f"{v:.6g}") for k, v in self.values.items()},
                           meta={**meta, "ci95": {k: [float(f"{a:.6g}"), float(f"{b:.6g}")]
                                                  for k, (a, b) in self.ci.items()},
                                 "ttft_offset_s": round(self.ttft_offset_s, 6), "residuals": self.residuals,
                                 **self.notes})


def _errors(sim: np.ndarray, obs: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(sim) & np.isfinite(obs) & (obs > 0)
    if not ok.any():
        return {"n": 0}
    rel = sim[ok] / obs[ok] - 1.0
    return {"n": int(ok.sum()), "mean_abs_rel_err": float(np.mean(np.abs(rel))),
            "median_abs_rel_err": float(np.median(np.abs(rel))),
            "mean_err": float(sim[ok].mean() / obs[ok].mean() - 1.0),
            "p90_err": float(np.percentile(sim[ok], 90) / np.percentile(obs[ok], 90) - 1.0)}


def _decode_state(first: np.ndarray, end: np.ndarray, prompt: np.ndarray, tpot: np.ndarray, t: float) -> tuple[int, int]:
    """Requests decoding at time t on one backend and their KV tokens (prompt + tokens generated so far)."""
    live = (first <= t) & (end > t)
    rate = np.where(np.isfinite(tpot[live]) & (tpot[live] > 0), tpot[live], np.inf)
    return int(live.sum()), int(np.sum(prompt[live] + (t - first[live]) / rate))


def openloop_items(rp: Replay, points: int = 16, group_tol: float = 0.003) -> list[tuple[float, int, list, list]]:
    """What each observed decode interval held, reconstructed from the recorded timestamps of its backend.

    For request i decoding from its first token f_i to its end e_i (out_i - 1 steps): the prefills that
    completed inside (other requests' first tokens; first tokens within `group_tol` seconds share a step)
    with the decode batch at that moment, and the decode batch at `points` instants of the interval.
    """
    first = rp.arrival + rp.ttft
    end = first + rp.tpot * (rp.output - 1)
    items = []
    for b in range(rp.instances):
        idx = np.flatnonzero((rp.backend == b) & np.isfinite(rp.ttft) & np.isfinite(rp.tpot))
        fb, eb, pb, tb = first[idx], end[idx], rp.prompt[idx], rp.tpot[idx]
        groups: list[list[float]] = []  # [time, prefill tokens, sequences, query-key pairs]
        for j in np.argsort(fb, kind="stable").tolist():
            pairs = float(pb[j]) * (pb[j] + 1) / 2
            if groups and fb[j] - groups[-1][0] < group_tol:
                groups[-1][1] += int(pb[j])
                groups[-1][2] += 1
                groups[-1][3] += pairs
            else:
                groups.append([float(fb[j]), int(pb[j]), 1, pairs])
        gt = np.array([g[0] for g in groups])
        gstate = [_decode_state(fb, eb, pb, tb, g[0] - 1e-9) for g in groups]
        for j in range(len(idx)):
            a, z = fb[j], eb[j]
            if not z > a:
                continue
            mix = [(int(groups[k][1]), int(groups[k][2]), groups[k][3], gstate[k])
                   for k in np.flatnonzero((gt > a + 1e-9) & (gt < z - 1e-9)).tolist()]
            pts = [_decode_state(fb, eb, pb, tb, a + (z - a) * (q + 0.5) / points) for q in range(points)]
            items.append((float(z - a), int(rp.output[idx[j]] - 1), mix, pts))
    return items


def openloop_steps(items: list[tuple[float, int, list, list]], cost: Any, budget: int = 8192) -> np.ndarray:
    """Predicted decode steps of each interval: its mixed (prefill) steps plus the decode-only time left
    divided by the step time (averaged as 1/t: steps, not seconds, are what the interval counts)."""
    from llmsched.model.base import BatchStats

    out = np.empty(len(items))
    for n, (dur, _, mix, pts) in enumerate(items):
        t_mix, n_mix = 0.0, 0
        for p, s, pairs, (d, kv) in mix:
            # prompts beyond the token budget left by the decodes were chunked over several iterations
            k = max(1, -(-p // max(1, budget - d)))
            t_mix += k * cost.step_time(BatchStats(prefill_tokens=-(-p // k), prefill_pairs=pairs / k,
                                                   prefill_seqs=s, decode_tokens=d, kv_tokens=kv), 0.0)
            n_mix += k
        inv = np.mean([1.0 / cost.step_time(BatchStats(decode_tokens=max(d, 1), kv_tokens=kv), 0.0)
                       for d, kv in pts])
        out[n] = n_mix + max(dur - t_mix, 0.0) * inv
    return out


def fit_record(rp: Replay, model: str, gpu: str, tp: int | None = None, engine: dict[str, Any] | None = None,
               bootstrap: int = 200, seed: int = 0, refine_evals: int = 60) -> Fit:
    """Fit FREE knobs to the replay's observed TTFT and TPOT: open-loop start, closed-loop refinement."""
    from scipy.optimize import least_squares, minimize

    from llmsched.model import build_cost_model

    m_ttft = np.isfinite(rp.ttft) & (rp.ttft > 0)
    m_tpot = np.isfinite(rp.tpot) & (rp.tpot > 0)
    items = openloop_items(rp)
    budget = (engine or {}).get("max_num_batched_tokens", 8192)
    if len(items) < 3 * len(FREE):
        raise ValueError(f"too few streamed requests with 2+ output tokens to fit ({len(items)})")
    steps_obs = np.array([it[1] for it in items], dtype=np.float64)
    obs_ttft, obs_tpot = rp.ttft[m_ttft], rp.tpot[m_tpot]
    s_ttft = float(np.mean(obs_ttft)) if m_ttft.any() else 1.0
    lo = np.array([math.log(BOUNDS[k][0]) for k in FREE])
    hi = np.array([math.log(BOUNDS[k][1]) for k in FREE])
    evals = 0

    def unpack(x: np.ndarray) -> dict[str, float]:
        return {k: float(math.exp(v)) for k, v in zip(FREE, np.clip(x, lo, hi), strict=True)}

    # Stage 1, open loop: the step-time model on the batches reconstructed from the recorded timestamps.
    # Smooth in the knobs (no simulated schedule that could flip), so a gradient method converges.
    def steps_resid(x: np.ndarray) -> np.ndarray:
        pred = openloop_steps(items, build_cost_model(model, gpu, tp, **unpack(x)), budget)
        return np.log(np.clip(pred, 1e-9, None) / steps_obs)

    x0 = np.array([math.log(START[k]) for k in FREE])
    st1 = least_squares(steps_resid, x0, bounds=(lo, hi), x_scale=1.0)

    # Stage 2, closed loop: replay with pinned routing and minimise the per-request errors. A small change
    # of a knob can reorder two events and flip a batch, so this objective is rugged: Nelder-Mead from the
    # open-loop values over a 5% simplex, a bounded number of simulations.
    def per_request(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        nonlocal evals
        evals += 1
        ttft, tpot = simulate_replay(rp, model, gpu, tp, unpack(x), engine=engine)
        sim1 = np.nan_to_num(ttft[m_ttft], nan=10 * s_ttft)  # a rejected request costs a large finite error
        off = max(0.0, float(np.mean(obs_ttft - sim1))) if len(sim1) else 0.0  # least squares, profiled out
        r1 = (sim1 + off - obs_ttft) / s_ttft
        r2 = np.nan_to_num(np.log(np.clip(tpot[m_tpot], 1e-9, None) / obs_tpot), nan=5.0)
        return r1, r2, off

    def objective(x: np.ndarray) -> float:
        # Gaussian likelihood with each metric's noise level profiled out: sum_m n_m log(mean r_m^2). Gateway
        # TTFTs carry network and event-loop jitter that TPOTs (a difference over many tokens) average away;
        # this weighs each metric by how well it is measured.
        r1, r2, _ = per_request(x)
        return float(sum(len(r) * math.log(float(np.mean(r * r)) + 1e-12) for r in (r1, r2) if len(r)))

    x_best = st1.x
    if refine_evals > 0:
        simplex = np.vstack([st1.x] + [st1.x + np.eye(len(FREE))[i] * 0.05 for i in range(len(FREE))])
        st2 = minimize(objective, st1.x, method="Nelder-Mead",
                       options={"initial_simplex": simplex, "xatol": 1e-3, "fatol": 1e-3, "maxfev": refine_evals})
        x_best = np.clip(st2.x, lo, hi)
    values = unpack(x_best)
    # Intervals: one-step bootstrap of the open-loop stage (its Jacobian is smooth), centred on the result.
    ci = _bootstrap(x_best, st1.jac, st1.fun, len(st1.fun), bootstrap, seed, lo, hi)
    _, _, off = per_request(x_best)
    ttft, tpot = simulate_replay(rp, model, gpu, tp, values, engine=engine)
    residuals = {"ttft": _errors(ttft + off, rp.ttft), "tpot": _errors(tpot, rp.tpot)}
    return Fit(values, {k: (math.exp(a), math.exp(b)) for k, (a, b) in zip(FREE, ci, strict=True)}, residuals,
               off, evals, {"fitted_on_requests": int(len(rp.arrival)),
                            "open_loop": {k: float(f"{v:.6g}") for k, v in unpack(st1.x).items()},
                            "optimizer": "scipy least_squares (open loop) + Nelder-Mead (closed-loop replay)"})


def _bootstrap(x: np.ndarray, jac: np.ndarray, r: np.ndarray, n1: int, reps: int, seed: int, lo: np.ndarray,
               hi: np.ndarray) -> list[tuple[float, float]]:
    """95% intervals from one Gauss-Newton step per resample of the residual rows (TTFT and TPOT rows
    resampled within their own group)."""
    if reps <= 0:
        return [(float(v), float(v)) for v in x]
    rng = np.random.default_rng([seed, 0xB007])
    n = len(r)
    groups = [np.arange(0, n1), np.arange(n1, n)]  # resampled within each group
    steps = []
    for _ in range(reps):
        idx = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups if len(g)])
        J, rb = jac[idx], r[idx]
        step, *_ = np.linalg.lstsq(J, -rb, rcond=None)
        steps.append(np.clip(x + step, lo, hi))
    s = np.array(steps)
    return [(float(a), float(b)) for a, b in zip(np.percentile(s, 2.5, axis=0), np.percentile(s, 97.5, axis=0),
                                                 strict=True)]


def calibrate_from_record(path: Path, model: str, gpu: str, tp: int | None = None,
                          time_scale: float | None = None, served_model: str | None = None,
                          **kw: Any) -> tuple[Fit, Replay]:
    rec = rows_of_model(read_recording(path), served_model)  # one model's rows (rows_of_model: when it must)
    if time_scale is not None:
        s = time_scale / float(rec.header.get("time_scale", 1.0))
        rec.arrival, rec.ttft, rec.e2e = rec.arrival * s, rec.ttft * s, rec.e2e * s
    rp = replay_of(rec)
    return fit_record(rp, model, gpu, tp, **kw), rp
