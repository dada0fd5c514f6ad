"""Fit the roofline model's kernel efficiencies and collective links to Vidur's profiles.

    python -m llmsched.model.calibrate ../shared/calibration/vidur/profiling [--write]

Compute: for each GPU kind (a100, h100), one `ComputeFit` (GEMM FLOP and bandwidth efficiencies, elementwise
bandwidth efficiency, two kernel floors) is fitted jointly over all its `compute/<gpu>/<model>/mlp.csv`
profiles by robust least squares (scipy) on the operators' errors relative to the measured layer time, so the
large operators weigh most. The figure of merit is the MAPE of one layer's token-level time (the sum of the
per-layer operators, residual add counted twice) over every (num_tokens, tp) row of a profile.

Network: `network/<node>/all_reduce.csv` and `send_recv.csv` (message size in bytes) give alpha-beta links,
latency + bytes / bw, fitted by non-negative least squares on relative error, per worker count, intra-node
(all workers on one node) and inter-node.

Decode attention: the shipped rows of Vidur's A100 `attention.csv` (`llmsched/data/calibration`, see its
README) give decode attention's kernel floor, HBM bandwidth efficiency, SM streaming ratio and latency per CTA
round (`roofline.attn_waves`), fitted by the same robust least squares on relative error:
`ATTN_DECODE[gpu] = {bw_eff, latency_s, sm_ratio, round_latency_s, mape, rows}`.

Custom all-reduce: vLLM's kernel timed on H100 at tp 2/4/8 (sglang PR #2904, shipped beside the attention rows)
gives its latency per barrier phase and the bytes each GPU moves per second, fitted the same way through the
model's own `all_reduce_time` (one-/two-shot by vLLM's rule): `CUSTOM_ALL_REDUCE[gpu]`.

`--write` rewrites `llmsched/model/fitted.py` with the figures and the MAPE table.
"""

from __future__ import annotations

import argparse
import csv
import pprint
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares, nnls

from llmsched.model import fitted
from llmsched.model.presets import GpuPreset, LlmPreset, get_gpu
from llmsched.model.roofline import ComputeFit, CostModel

# Operators of one layer in Vidur's mlp.csv (emb is per model, not per layer).
LAYER_OPS = (
    "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
    "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
SHAPE_COLS = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "num_tokens",
              "num_tensor_parallel_workers")
GPU_OF_KEY = {"a100": "a100-80g", "h100": "h100"}  # profile directory -> GPU preset (80GB DGX boxes)
FITTED_PY = Path(__file__).with_name("fitted.py")
ATTN_DECODE_CSV = Path(__file__).resolve().parents[1] / "data" / "calibration" / "vidur_a100_attention_decode.csv"
ATTN_COLS = ("gpu", "n_embd", "n_q_head", "n_kv_head", "tp", "batch_size", "kv_cache_size", "attn_decode_median_ms")
CUSTOM_AR_CSV = ATTN_DECODE_CSV.with_name("sglang_pr2904_vllm_custom_allreduce_h100.csv")


@dataclass
class Profile:
    """One mlp.csv: per-operator median times (s) over (num_tokens, tp) rows of one model on one GPU kind."""

    gpu_key: str
    model: str
    path: Path
    shape: LlmPreset
    num_tokens: np.ndarray
    tp: np.ndarray
    ops: dict[str, np.ndarray]

    @property
    def name(self) -> str:
        return f"{self.gpu_key}/{self.model}"

    @property
    def layer_time(self) -> np.ndarray:
        return sum(self.ops[o] for o in LAYER_OPS) + self.ops["add"]


def _read_csv(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
        return [(i + 2, row) for i, row in enumerate(reader)]


def _num(path: Path, line: int, row: dict[str, str], col: str) -> float:
    try:
        v = float(row[col])
    except (TypeError, ValueError):
        raise ValueError(f"{path}:{line}: column {col!r} is not a number: {row[col]!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{path}:{line}: column {col!r} must be a finite non-negative number, got {v}")
    return v


def load_profile(path: Path, gpu_key: str, model: str) -> Profile:
    cols = SHAPE_COLS + tuple(f"time_stats.{o}.median" for o in LAYER_OPS)
    rows = _read_csv(path, cols)
    if not rows:
        raise ValueError(f"{path}: no rows")
    shapes = {tuple(r[c] for c in SHAPE_COLS[:5]) for _, r in rows}
    if len(shapes) != 1:
        raise ValueError(f"{path}: more than one model shape in one profile: {sorted(shapes)}")
    line, r0 = rows[0]
    heads, kv, hidden, ffn, vocab = (int(_num(path, line, r0, c)) for c in SHAPE_COLS[:5])
    shape = LlmPreset(name=model, num_layers=1, hidden=hidden, num_heads=heads, num_kv_heads=kv,
                      head_dim=hidden // heads, ffn=ffn, vocab=vocab)
    n = np.array([_num(path, ln, r, "num_tokens") for ln, r in rows])
    tp = np.array([int(_num(path, ln, r, "num_tensor_parallel_workers")) for ln, r in rows])
    ops = {o: np.array([_num(path, ln, r, f"time_stats.{o}.median") for ln, r in rows]) * 1e-3 for o in LAYER_OPS}
    return Profile(gpu_key, model, path, shape, n, tp, ops)


def load_profiles(root: Path) -> list[Profile]:
    """All compute/<gpu>/<org>/<model>/mlp.csv under a Vidur profiling directory."""
    paths = sorted((root / "compute").glob("*/*/*/mlp.csv"))
    if not paths:
        raise ValueError(f"{root}: no compute/<gpu>/<org>/<model>/mlp.csv profiles found")
    out = []
    for p in paths:
        key = p.parts[-4]
        if key not in GPU_OF_KEY:
            raise ValueError(f"{p}: unknown GPU directory {key!r}; known: {', '.join(GPU_OF_KEY)}")
        out.append(load_profile(p, key, p.parts[-2]))
    return out


def predict_ops(profile: Profile, fit: ComputeFit) -> dict[str, np.ndarray]:
    """The model's per-operator times for every row of a profile."""
    gpu = get_gpu(GPU_OF_KEY[profile.gpu_key])
    pred = {o: np.empty_like(profile.num_tokens) for o in LAYER_OPS}
    for tp in np.unique(profile.tp):
        sel = profile.tp == tp
        m = CostModel(profile.shape, gpu, tp=int(tp), num_gpus=int(tp), fit=fit)
        for o, t in m.layer_op_times(profile.num_tokens[sel]).items():
            pred[o][sel] = t
    return pred


def layer_mape(profile: Profile, fit: ComputeFit) -> float:
    """Mean absolute percentage error of the per-layer token-level time over a profile's rows."""
    pred = predict_ops(profile, fit)
    total = sum(pred[o] for o in LAYER_OPS) + pred["add"]
    meas = profile.layer_time
    return float(np.mean(np.abs(total - meas) / meas) * 100)


_X0 = np.array([0.7, 0.8, 0.35, 5.0, 2.0, 3.0])  # efficiencies, floors in microseconds, knee p
_LO = np.array([0.05, 0.05, 0.02, 0.0, 0.0, 1.0])
_HI = np.array([1.0, 1.0, 1.0, 50.0, 50.0, 16.0])


def _fit_of(x: np.ndarray) -> ComputeFit:
    return ComputeFit(float(x[0]), float(x[1]), float(x[2]), float(x[3]) * 1e-6, float(x[4]) * 1e-6, float(x[5]))


def fit_compute(profiles: list[Profile]) -> ComputeFit:
    """One ComputeFit for a set of profiles of the same GPU kind."""

    def residuals(x: np.ndarray) -> np.ndarray:
        fit = _fit_of(x)
        res = []
        for p in profiles:
            pred = predict_ops(p, fit)
            meas_layer = p.layer_time
            for o in LAYER_OPS:
                res.append((pred[o] - p.ops[o]) / meas_layer)
            total = sum(pred[o] for o in LAYER_OPS) + pred["add"]
            res.append((total - meas_layer) / meas_layer)
        return np.concatenate(res)

    sol = least_squares(residuals, _X0, bounds=(_LO, _HI), loss="soft_l1", f_scale=0.05)
    return _fit_of(sol.x)


def fit_link(size: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """latency + size / bw with non-negative coefficients, least squares on relative error."""
    a = np.column_stack([1.0 / t, size / t])
    (lat, inv_bw), _ = nnls(a, np.ones_like(t))
    return float(lat), float(1.0 / inv_bw) if inv_bw > 0 else float("inf")


def _link_mape(size: np.ndarray, t: np.ndarray, lat: float, bw: float) -> float:
    return float(np.mean(np.abs(lat + size / bw - t) / t) * 100)


def fit_network(root: Path) -> tuple[dict, dict, dict[str, float]]:
    """ALL_REDUCE[gpu][intra|inter][num_workers] and SEND_RECV[gpu][intra|inter] = (latency_s, bytes/s)."""
    all_reduce: dict = {}
    send_recv: dict = {}
    mape: dict[str, float] = {}
    for node_dir in sorted((root / "network").glob("*_dgx")):
        key = node_dir.name.removesuffix("_dgx")
        for coll, table in (("all_reduce", all_reduce), ("send_recv", send_recv)):
            path = node_dir / f"{coll}.csv"
            if not path.exists():
                continue
            med = f"time_stats.{coll}.median"
            rows = _read_csv(path, (med, "num_workers", "devices_per_node", "size"))
            groups: dict[tuple[str, int], list[tuple[float, float]]] = {}
            for ln, r in rows:
                nw, dpn = int(_num(path, ln, r, "num_workers")), int(_num(path, ln, r, "devices_per_node"))
                kind = "intra" if nw == dpn else "inter"
                t = _num(path, ln, r, med) * 1e-3
                if t > 0:
                    groups.setdefault((kind, nw), []).append((_num(path, ln, r, "size"), t))
            for (kind, nw), pts in sorted(groups.items()):
                size, t = np.array(pts).T
                lat, bw = fit_link(size, t)
                mape[f"{key}/{coll}/{kind}/{nw}"] = _link_mape(size, t, lat, bw)
                if coll == "all_reduce":
                    table.setdefault(key, {"intra": {}, "inter": {}})[kind][nw] = (lat, bw)
                else:
                    table.setdefault(key, {})[kind] = (lat, bw)
    return all_reduce, send_recv, mape


def _attn_rows(path: Path) -> dict[str, list[tuple[LlmPreset, int, float, float, float]]]:
    """Decode-attention rows by GPU key: (shape, tp, sequences, context tokens, seconds per layer)."""
    out: dict[str, list[tuple[LlmPreset, int, float, float, float]]] = {}
    for ln, r in _read_csv(path, ATTN_COLS):
        key = r["gpu"]
        if key not in GPU_OF_KEY:
            raise ValueError(f"{path}:{ln}: unknown GPU {key!r}; known: {', '.join(GPU_OF_KEY)}")
        hidden, heads, kv = (int(_num(path, ln, r, c)) for c in ("n_embd", "n_q_head", "n_kv_head"))
        shape = LlmPreset(name="attn", num_layers=1, hidden=hidden, num_heads=heads, num_kv_heads=kv,
                          head_dim=hidden // heads, ffn=1, vocab=1)
        b, ctx = _num(path, ln, r, "batch_size"), _num(path, ln, r, "kv_cache_size")
        out.setdefault(key, []).append((shape, int(_num(path, ln, r, "tp")), b, b * ctx,
                                        _num(path, ln, r, "attn_decode_median_ms") * 1e-3))
    return out


def _attn_predict(rows: list, key: str, fit: ComputeFit, z: np.ndarray) -> np.ndarray:
    """Per-layer decode attention of each row with z = (floor us, 1 / bw_eff, sm_ratio, round latency us)."""
    gpu = get_gpu(GPU_OF_KEY[key])
    return np.array([float(CostModel(shape, gpu, tp=tp, fit=fit, attn_bw_eff=1.0 / z[1], attn_latency_s=z[0] * 1e-6,
                                     attn_sm_ratio=z[2], attn_round_latency_s=z[3] * 1e-6)
                           .decode_attention_time(b, kv)) for shape, tp, b, kv, _ in rows])


def fit_attention_decode(path: Path, fits: dict[str, ComputeFit]) -> dict[str, dict[str, float]]:
    """ATTN_DECODE[gpu] = {bw_eff, latency_s, sm_ratio, round_latency_s, mape (%), rows}: per layer
    t = floor + rounds x round latency + KV bytes / (bw x eff) x max(1, imbalance / sm_ratio) + q/o bytes, with
    rounds and imbalance from the kernel's CTA quantisation (`roofline.attn_waves`); robust least squares on
    relative error."""
    out = {}
    for key, rows in _attn_rows(path).items():
        fit = fits.get(key) or ComputeFit(**fitted.COMPUTE[key])
        t = np.array([r[-1] for r in rows])

        def residuals(z: np.ndarray, rows: list = rows, t: np.ndarray = t, fit: ComputeFit = fit,
                      key: str = key) -> np.ndarray:
            return (_attn_predict(rows, key, fit, z) - t) / t

        sol = least_squares(residuals, [5.0, 1.3, 1.5, 5.0], bounds=([0.0, 1.0, 0.5, 0.0], [100.0, 20.0, 10.0, 100.0]),
                            loss="soft_l1", f_scale=0.05, diff_step=1e-3)
        pred = _attn_predict(rows, key, fit, sol.x)
        # The smooth fit (no CTA quantisation: infinite SM ratio, no round latency), for GPUs whose kernel
        # was not profiled (`roofline.attn_decode_fit`).
        smooth = least_squares(lambda z: residuals(np.array([z[0], z[1], np.inf, 0.0])), [10.0, 1.3],
                               bounds=([0.0, 1.0], [100.0, 20.0]), loss="soft_l1", f_scale=0.05, diff_step=1e-3)
        spred = _attn_predict(rows, key, fit, np.array([smooth.x[0], smooth.x[1], np.inf, 0.0]))
        out[key] = {"bw_eff": 1.0 / float(sol.x[1]), "latency_s": float(sol.x[0]) * 1e-6,
                    "sm_ratio": float(sol.x[2]), "round_latency_s": float(sol.x[3]) * 1e-6,
                    "mape": float(np.mean(np.abs(pred - t) / t) * 100), "rows": len(rows),
                    "smooth_bw_eff": 1.0 / float(smooth.x[1]), "smooth_latency_s": float(smooth.x[0]) * 1e-6,
                    "smooth_mape": float(np.mean(np.abs(spred - t) / t) * 100)}
    return out


def fit_custom_all_reduce(path: Path) -> dict[str, dict[str, float]]:
    """CUSTOM_ALL_REDUCE[gpu] = {latency_s, bw, mape (%), rows} from (tp, size_bytes, latency_us) rows."""
    by_gpu: dict[str, list[tuple[int, float, float]]] = {}
    for ln, r in _read_csv(path, ("gpu", "tp", "size_bytes", "latency_us")):
        if r["gpu"] not in GPU_OF_KEY:
            raise ValueError(f"{path}:{ln}: unknown GPU {r['gpu']!r}; known: {', '.join(GPU_OF_KEY)}")
        by_gpu.setdefault(r["gpu"], []).append((int(_num(path, ln, r, "tp")), _num(path, ln, r, "size_bytes"),
                                                _num(path, ln, r, "latency_us") * 1e-6))
    shape = LlmPreset(name="ar", num_layers=1, hidden=8192, num_heads=64, num_kv_heads=8, head_dim=128, ffn=1, vocab=1)
    out = {}
    for key, rows in by_gpu.items():
        gpu = get_gpu(GPU_OF_KEY[key])
        t = np.array([r[2] for r in rows])

        def predict(z: np.ndarray, rows: list = rows, gpu: GpuPreset = gpu) -> np.ndarray:
            return np.array([float(CostModel(shape, gpu, tp=tp, custom_ar_max_bytes=float("inf"),
                                             custom_ar_latency_s=z[0] * 1e-6, custom_ar_bw=z[1] * 1e9)
                                   .all_reduce_time(size)) for tp, size, _ in rows])

        sol = least_squares(lambda z, t=t: (predict(z) - t) / t, [10.0, 100.0], bounds=([0.0, 1.0], [100.0, 5000.0]),
                            loss="soft_l1", f_scale=0.05)
        pred = predict(sol.x)
        out[key] = {"latency_s": float(sol.x[0]) * 1e-6, "bw": float(sol.x[1]) * 1e9,
                    "mape": float(np.mean(np.abs(pred - t) / t) * 100), "rows": len(rows)}
    return out


def calibrate(root: Path) -> tuple[dict[str, ComputeFit], dict[str, float], dict, dict, dict[str, float]]:
    """Fit everything under a Vidur profiling directory; returns fits, per-profile MAPE and network fits."""
    profiles = load_profiles(root)
    fits: dict[str, ComputeFit] = {}
    mape: dict[str, float] = {}
    for key in sorted({p.gpu_key for p in profiles}):
        group = [p for p in profiles if p.gpu_key == key]
        fits[key] = fit_compute(group)
        for p in group:
            mape[p.name] = layer_mape(p, fits[key])
    all_reduce, send_recv, net_mape = fit_network(root)
    return fits, mape, all_reduce, send_recv, net_mape


def _round(x: float) -> float:
    return float(f"{x:.6g}")


def render_fitted(fits: dict[str, ComputeFit], mape: dict[str, float], all_reduce: dict, send_recv: dict,
                  net_mape: dict[str, float], attn: dict[str, dict[str, float]] | None = None,
                  car: dict[str, dict[str, float]] | None = None) -> str:
    compute = {k: {f: _round(v) for f, v in asdict(fit).items()} for k, fit in fits.items()}
    ar = {k: {kind: {n: (_round(a), _round(b)) for n, (a, b) in d.items()} for kind, d in v.items()}
          for k, v in all_reduce.items()}
    sr = {k: {kind: (_round(a), _round(b)) for kind, (a, b) in v.items()} for k, v in send_recv.items()}
    fmt = lambda obj: pprint.pformat(obj, width=110, sort_dicts=True)  # noqa: E731
    attn = {k: {f: _round(v) for f, v in d.items()} for k, d in (attn or {}).items()}
    car = {k: {f: _round(v) for f, v in d.items()} for k, d in (car or {}).items()}
    return f'''"""Fitted figures of the roofline cost model. GENERATED: do not edit by hand.

Made by `python -m llmsched.model.calibrate <vidur>/profiling --write` from Vidur's public operator profiles
(compute/<gpu>/<model>/mlp.csv, medians) and NCCL profiles (network/<node>/{{all_reduce,send_recv}}.csv):
COMPUTE by robust least squares over each GPU kind's profiles jointly; links (latency_s, bytes/s) by
non-negative least squares on relative error. MAPE: per-layer token-level time per profile, and per link fit (%).
ATTN_DECODE: decode attention's bandwidth efficiency, kernel floor, SM streaming ratio and latency per CTA round,
fitted to the shipped Vidur A100 rows.
CUSTOM_ALL_REDUCE: vLLM's custom all-reduce (latency per barrier phase, bytes/s per GPU), fitted to the shipped
sglang PR #2904 H100 timings.
"""

COMPUTE = {fmt(compute)}

ALL_REDUCE = {fmt(ar)}

SEND_RECV = {fmt(sr)}

MAPE = {fmt({k: round(v, 2) for k, v in mape.items()})}

NETWORK_MAPE = {fmt({k: round(v, 2) for k, v in net_mape.items()})}

ATTN_DECODE = {fmt(attn)}

CUSTOM_ALL_REDUCE = {fmt(car)}
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llmsched.model.calibrate", description=__doc__.split("\n")[0])
    ap.add_argument("profiling_dir", type=Path, help="Vidur's profiling/ directory (compute/, network/)")
    ap.add_argument("--write", action="store_true", help=f"rewrite {FITTED_PY.name} with the new figures")
    args = ap.parse_args(argv)
    fits, mape, all_reduce, send_recv, net_mape = calibrate(args.profiling_dir)
    for key, fit in fits.items():
        print(f"{key}: " + ", ".join(f"{f}={v:.4g}" for f, v in asdict(fit).items()))
    print(f"\n{'profile':40s} {'layer MAPE %':>12s}")
    for name, v in mape.items():
        print(f"{name:40s} {v:12.2f}")
    print(f"\n{'link':40s} {'latency us':>10s} {'GB/s':>8s} {'MAPE %':>8s}")
    for name, v in net_mape.items():
        key, coll, kind, nw = name.split("/")
        lat, bw = all_reduce[key][kind][int(nw)] if coll == "all_reduce" else send_recv[key][kind]
        print(f"{name:40s} {lat * 1e6:10.1f} {bw / 1e9:8.1f} {v:8.2f}")
    attn = fit_attention_decode(ATTN_DECODE_CSV, fits)
    print(f"\n{'decode attention':40s} {'bw eff':>10s} {'floor us':>9s} {'SM ratio':>9s} {'round us':>9s} {'rows':>6s} "
          f"{'MAPE %':>8s}")
    for key, d in attn.items():
        print(f"{key:40s} {d['bw_eff']:10.3f} {d['latency_s'] * 1e6:9.1f} {d['sm_ratio']:9.2f} "
              f"{d['round_latency_s'] * 1e6:9.1f} {int(d['rows']):6d} {d['mape']:8.2f}")
    car = fit_custom_all_reduce(CUSTOM_AR_CSV)
    print(f"\n{'vLLM custom all-reduce':40s} {'latency us':>10s} {'GB/s':>8s} {'rows':>6s} {'MAPE %':>8s}")
    for key, d in car.items():
        print(f"{key:40s} {d['latency_s'] * 1e6:10.2f} {d['bw'] / 1e9:8.1f} {int(d['rows']):6d} {d['mape']:8.2f}")
    if args.write:
        FITTED_PY.write_text(render_fitted(fits, mape, all_reduce, send_recv, net_mape, attn, car))
        print(f"\nwrote {FITTED_PY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
