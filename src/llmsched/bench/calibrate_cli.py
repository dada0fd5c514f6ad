"""`llmsched calibrate`: fit the cost model to a gateway recording or to vLLM /metrics (docs/calibration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmsched.clikit import fail


def calibrate_cmd(
    from_record: Annotated[Path | None, typer.Option("--from-record", help="a `serve --record` file")] = None,
    from_metrics: Annotated[list[str] | None, typer.Option("--from-metrics", help="a vLLM base URL whose "
                                                           "/metrics is sampled (repeatable)")] = None,
    model: Annotated[str, typer.Option(help="LLM preset of the backends")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU preset of the backends")] = "h100",
    tp: Annotated[int | None, typer.Option(help="tensor-parallel degree (default: the preset's)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the calibration here (.json, .yaml or .yml)")] = None,
    window: Annotated[float, typer.Option(help="--from-metrics: seconds between the two samples")] = 60.0,
    time_scale: Annotated[float | None, typer.Option(help="emulated seconds per recorded second (emulators' "
                                                     "--speed; default: the recording's header, or 1)")] = None,
    bootstrap: Annotated[int, typer.Option(help="bootstrap resamples for the confidence intervals")] = 200,
    refine_evals: Annotated[int, typer.Option(help="closed-loop replays of the refinement stage")] = 60,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap and the synthetic draws")] = 0,
    served_model: Annotated[str | None, typer.Option(help="--from-record: fit only the rows of this model (the "
                                                     "gateway's model id; needed when it recorded several)")] = None,
) -> None:
    """Fit step_overhead_s, compute_scale and bandwidth_scale to what real backends did."""
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
                                            seed=seed, refine_evals=refine_evals, served_model=served_model)
            cal = fit.calibration({**meta, "source": str(from_record), "requests": rp.notes})
            typer.echo(f"fitted on {rp.notes['replayed']} requests of {from_record} ({rp.instances} backends, "
                       f"routing pinned as recorded; {fit.evaluations} replays)")
            for k, v in fit.values.items():
                lo, hi = fit.ci[k]
                typer.echo(f"  {k:16s} {v:.6g}   95% CI [{lo:.6g}, {hi:.6g}]")
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
            wins = asyncio.run(sample_windows(list(from_metrics or []), window, time_scale or 1.0))
            res = fit_metrics(wins, model, gpu, tp, seed=seed)
            cal = Calibration(**{k: float(f"{v:.6g}") for k, v in res["values"].items()},
                              meta={**meta, "source": list(from_metrics or []), "window_s": window,
                                    "moment_errors": res["moment_errors"]})
            for k, v in res["values"].items():
                typer.echo(f"  {k:16s} {v:.6g}")
            for k, errs in res["moment_errors"].items():
                typer.echo(f"  residual {k}: " + ", ".join(f"{e:+.1%}" for e in errs) + " (per backend)")
    except (ValueError, WorkloadError, OSError) as e:
        fail(str(e))
    if out is not None:
        save_calibration(cal, out)
        typer.echo(f"wrote {out}")
