"""`llmsched calibrate`: fit the cost model to a gateway recording or to vLLM /metrics (docs/calibration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmsched.clikit import fail


def identifiability_lines(values: dict[str, float], ci: dict[str, tuple[float, float]],
                          corr: dict[str, float], wide: float = 0.10, collinear: float = 0.95) -> list[str]:
    """Say which knobs the data did not pin down: an interval wider than +-`wide` of the value, or two
    estimates correlated beyond `collinear` (the data move them together; only a combination is known)."""
    out, loose = [], set()
    for k, v in values.items():
        lo, hi = ci[k]
        if v > 0 and (hi - lo) / 2 > wide * v:
            loose.add(k)
            out.append(f"  NOT IDENTIFIED: {k}: its 95% interval spans {lo:.4g}..{hi:.4g} (more than +-{wide:.0%}); "
                       "treat the value as a guess")
    for pair, c in corr.items():
        a, b = pair.split("~")
        if abs(c) >= collinear and loose & {a, b}:
            out.append(f"  COLLINEAR: {a} and {b} (correlation {c:+.2f}): the data trade one for the other, only "
                       "their combination is known; a recording with more varied batches separates them")
        elif abs(c) >= collinear:
            out.append(f"  note: {a} and {b} are correlated ({c:+.2f}) but their intervals are narrow: the "
                       "recording still separates them")
    out.append("  correlations of the estimates: " + ", ".join(f"{p} {c:+.2f}" for p, c in corr.items()))
    return out


def _print_values(values: dict[str, float], ci: dict[str, tuple[float, float]], corr: dict[str, float]) -> None:
    for k, v in values.items():
        lo, hi = ci[k]
        typer.echo(f"  {k:16s} {v:.6g}   95% CI [{lo:.6g}, {hi:.6g}]")
    for line in identifiability_lines(values, ci, corr):
        typer.echo(line)


def calibrate_cmd(
    from_record: Annotated[Path | None, typer.Option("--from-record", help="a `serve --record` file")] = None,
    from_metrics: Annotated[list[str] | None, typer.Option("--from-metrics", help="a vLLM base URL whose "
                                                           "/metrics is sampled (repeatable)")] = None,
    model: Annotated[str, typer.Option(help="LLM preset of the backends")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU preset of the backends")] = "h100",
    tp: Annotated[int | None, typer.Option(help="tensor-parallel degree (default: the preset's)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the calibration here (.json, .yaml or .yml)")] = None,
    window: Annotated[float, typer.Option(help="--from-metrics: seconds from the first read to the last")] = 60.0,
    scrapes: Annotated[int, typer.Option(min=2, help="--from-metrics: reads of every /metrics over the window "
                                         "(evenly spaced)")] = 11,
    time_scale: Annotated[float | None, typer.Option(help="emulated seconds per recorded second (emulators' "
                                                     "--speed; default: the recording's header, or 1)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the confidence intervals")] = 200,
    refine_evals: Annotated[int, typer.Option(help="closed-loop replays of the optional refinement stage (0: off; "
                                              "see docs/calibration.md)")] = 0,
    refits: Annotated[int, typer.Option(min=0, help="refits under resampling (and, --from-record, timing noise), "
                                        "joined to the intervals (0: one-step bootstrap only)")] = 8,
    timing_noise: Annotated[float, typer.Option(min=0.0, help="--from-record: seconds of noise the refits add to "
                                                "every recorded TTFT and end time")] = 1e-3,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap and the synthetic draws")] = 0,
    served_model: Annotated[str | None, typer.Option(help="--from-record: fit only the rows of this model (the "
                                                     "gateway's model id; needed when it recorded several)")] = None,
) -> None:
    """Fit step_overhead_s, compute_scale and bandwidth_scale (and expert_scale for MoE presets) to what real
    backends did; says which of them the data did not pin down."""
    from llmsched.model.calibration import Calibration, save_calibration
    from llmsched.workload.errors import WorkloadError

    if (from_record is None) == (not from_metrics):
        fail("give exactly one of --from-record FILE or --from-metrics URL ...")
    if served_model is not None and from_record is None:
        fail("--served-model selects the rows of a --from-record recording")
    if out is not None and out.suffix.lower() not in (".json", ".yaml", ".yml"):
        fail(f"--out {out}: the extension must be .json, .yaml or .yml")
    meta: dict[str, Any] = {"model": model, "gpu": gpu, "tp": tp}
    try:
        if from_record is not None:
            from llmsched.bench.calibrate import calibrate_from_record

            if not from_record.is_file():
                fail(f"--from-record: no such file {from_record}")
            fit, rp = calibrate_from_record(from_record, model, gpu, tp, time_scale, bootstrap=bootstrap,
                                            seed=seed, refine_evals=refine_evals, refits=refits,
                                            timing_noise_s=timing_noise, served_model=served_model)
            cal = fit.calibration({**meta, "source": str(from_record), "requests": rp.notes})
            typer.echo(f"fitted on {rp.notes['replayed']} requests of {from_record} ({rp.instances} backends, "
                       f"routing pinned as recorded; {fit.evaluations} replays)")
            _print_values(fit.values, fit.ci, fit.notes["correlation"])
            typer.echo(f"  (intervals: {fit.notes['interval']})")
            typer.echo(f"  ttft_offset_s    {fit.ttft_offset_s:.4g}   (gateway-to-engine time in every TTFT; "
                       "not a cost-model knob)")
            for metric, e in fit.residuals.items():
                if e.get("n"):
                    typer.echo(f"  residual {metric.upper():4s}: mean |rel err| {e['mean_abs_rel_err']:.1%}, "
                               f"median {e['median_abs_rel_err']:.1%}, error of the mean {e['mean_err']:+.1%}, "
                               f"of p90 {e['p90_err']:+.1%} (n={e['n']})"
                               + (" (after ttft_offset_s, whose fit zeroes the mean error)" if metric == "ttft"
                                  and fit.ttft_offset_s > 0 else ""))
        else:
            import asyncio

            from llmsched.bench.calibrate_metrics import fit_metrics, sample_windows

            typer.echo(f"sampling /metrics of {len(from_metrics or [])} backends over {window:g} s ...")
            wins = asyncio.run(sample_windows(list(from_metrics or []), window, time_scale or 1.0, scrapes))
            res = fit_metrics(wins, model, gpu, tp, seed=seed, refits=refits)
            cal = Calibration(**{k: float(f"{v:.6g}") for k, v in res["values"].items()},
                              meta={**meta, "source": list(from_metrics or []), "window_s": window,
                                    "scrapes": scrapes, "ci95": {k: [float(f"{x:.6g}") for x in v]
                                                                 for k, v in res["ci"].items()},
                                    "correlation": res["correlation"], "residuals": res["residuals"]})
            typer.echo(f"fitted on {res['residuals']['windows']} windows ({len(from_metrics or [])} backends x "
                       f"{scrapes - 1} intervals between reads)")
            _print_values(res["values"], res["ci"], res["correlation"])
            typer.echo(f"  (intervals: {refits} refits on resampled windows started ~10% off; they do not hold the "
                       "rebuilt iterations' own error)")
            typer.echo(f"  residual: inter-token sum per window, rms log error {res['residuals']['itl_sum_rms_log_err']:.1%}")
    except (ValueError, WorkloadError, OSError) as e:
        fail(str(e))
    if out is not None:
        save_calibration(cal, out)
        typer.echo(f"wrote {out}")
