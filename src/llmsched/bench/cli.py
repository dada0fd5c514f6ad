"""Typer commands `compare`, `scenarios` and `sweep`, mounted lazily on the `llmsched` app (cli.py).

Tables go to stdout; progress bars and notes (skipped workloads, where the report went) go to stderr, so
`llmsched compare --json > runs.json` stays valid JSON. The simulator, the executors and matplotlib are
imported inside the commands; user errors (a bad scenario, --jobs 0) become one `error:` line through
`llmsched.clikit`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from llmsched.clikit import fail

if TYPE_CHECKING:
    from rich.progress import Progress

    from llmsched.bench.traces import Skipped

out_console = Console()
if not out_console.is_terminal:
    out_console.width = 160  # piped to a file or CI log: do not squeeze the tables into 80 columns
err_console = Console(stderr=True)


def _progress(transient: bool) -> Progress:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=transient)


def _note_skipped(skipped: list[Skipped]) -> None:
    for s in skipped:
        err_console.print(f"[yellow]note:[/yellow] skipping {s.scenario} / {s.workload}: {s.reason}", highlight=False)


def _exit_if_skipped(skipped: list[Skipped]) -> None:
    """A table missing workloads is not a success: status 1 after the report is written."""
    if skipped:
        err_console.print(f"[yellow]incomplete:[/yellow] {len(skipped)} workload(s) skipped (trace not found; "
                          "see the notes above and the report)", highlight=False)
        raise typer.Exit(1)


def compare_cmd(
    scenario: Annotated[list[str] | None, typer.Option("--scenario", "-s", help="built-in name or YAML file; "
                                                       "repeatable; default: every built-in scenario, quick")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="apply each scenario's quick overrides (the default when "
                                        "no --scenario is given)")] = False,
    json: Annotated[bool, typer.Option("--json", help="print {\"runs\": [...]} instead of tables")] = False,
    out: Annotated[Path, typer.Option(help="report folder (its files from an earlier report are replaced)")] = Path(
        "llmsched-report"),
    traces: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="trace folder overriding the "
                                                "packaged traces (else $LLMSCHED_TRACES)")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="local worker processes")] = 2,
    seed: Annotated[int | None, typer.Option(min=0, help="override every scenario's seed")] = None,
    calibration: Annotated[Path | None, typer.Option(help="cost-model calibration file for every run")] = None,
    trace: Annotated[Path | None, typer.Option(help="what-if on a `serve --record` recording instead of "
                                               "scenarios (docs/calibration.md)")] = None,
    model: Annotated[str, typer.Option(help="--trace: LLM preset of the recorded backends")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="--trace: GPU preset of the recorded backends")] = "h100",
    tp: Annotated[int | None, typer.Option(min=1, help="--trace: tensor-parallel degree")] = None,
    expert_policy: Annotated[str | None, typer.Option(help="--trace, MoE presets: the expert placer the recorded "
                                                      "backends ran (default static); every placer is compared")] = None,
    knob_draws: Annotated[int, typer.Option(min=0, help="--trace: replay every run at this many of the "
                                            "calibration's knob draws (its refits) besides the estimate")] = 4,
    served_model: Annotated[str | None, typer.Option(help="--trace of a multi-model recording: the served model "
                                                     "whose rows to replay")] = None,
) -> None:
    """Compare policy sets on built-in or YAML scenarios (simulated); tables plus a report folder."""
    import json as jsonlib

    from llmsched.bench import compare as cmp
    from llmsched.bench.executors import LocalPool, RunFailed
    from llmsched.bench.report import check_out_dir, write_report
    from llmsched.bench.runner import strip_bulky
    from llmsched.bench.tables import rich_tables

    t0 = time.perf_counter()
    cal = None
    if calibration is not None:
        from llmsched.model.calibration import load_calibration

        cal = load_calibration(calibration)  # a bad file: one `error:` line (clikit)
    if served_model is not None and trace is None:
        fail("--served-model selects the rows of a --trace recording")
    if trace is not None:
        from llmsched.bench.whatif import print_what_if, what_if

        res = what_if(trace, model, gpu, tp, cal, seeds=3, expert_policy=expert_policy, knob_draws=knob_draws,
                      served_model=served_model)
        if json:
            out_console.file.write(jsonlib.dumps(res, default=str) + "\n")
        else:
            print_what_if(res)
        return
    if not scenario:
        quick = True  # the README's main job: a quick pass over every built-in scenario
    check_out_dir(out)
    comp = cmp.prepare(scenario, quick, seed, traces, cal)
    _note_skipped(comp.skipped)
    try:
        with LocalPool(jobs) as pool, _progress(transient=True) as progress:
            cmp.run(comp, pool, progress=progress)
    except RunFailed as e:
        fail(str(e))
    if json:
        out_console.file.write(jsonlib.dumps({"runs": [{**r, "result": strip_bulky(r["result"])}
                                                      for r in comp.records]}, default=str) + "\n")
    else:
        for t in rich_tables(comp.records, {s.name: s.columns for s in comp.scenarios}):
            out_console.print(t)
            out_console.print()
    files = write_report(out, comp.records, comp.scenarios, comp.skipped, quick=quick)
    import os

    err_console.print(f"{len(comp.records)} simulated runs in {time.perf_counter() - t0:.1f} s (simulations: "
                      f"{comp.cpu_s:.1f} CPU s on {jobs} worker(s), this process {time.process_time():.1f} CPU s; load average {os.getloadavg()[0]:.2f}); report: "
                      f"{out}/ ({len(files)} files: summary.md, results.json, {len(files) - 2} plots)", highlight=False)
    _exit_if_skipped(comp.skipped)


def scenarios_cmd() -> None:
    """List the built-in scenarios."""
    from rich.table import Table

    from llmsched.bench.scenario import list_scenarios

    t = Table(title="built-in scenarios (llmsched compare --scenario NAME)", title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("description")
    for name, desc in list_scenarios():
        t.add_row(name, desc)
    out_console.print(t)


def sweep_cmd(
    file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help="sweep YAML (scenarios, seeds, loads, "
                                         "policies)", show_default=False)],
    ray: Annotated[str | None, typer.Option(help="run on Ray: a cluster address, or 'local' for ray.init()")] = None,
    jobs: Annotated[int, typer.Option(min=1, help="local worker processes (without --ray)")] = 2,
    out: Annotated[Path, typer.Option(help="folder for runs.jsonl and the report")] = Path("llmsched-sweep"),
    resume: Annotated[bool, typer.Option("--resume/--no-resume",
                                         help="keep the runs already in OUT/runs.jsonl")] = True,
    traces: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help="trace folder overriding the "
                                                "packaged traces (else $LLMSCHED_TRACES)")] = None,
    calibration: Annotated[Path | None, typer.Option(help="cost-model calibration file for every run")] = None,
) -> None:
    """Run a grid of scenarios x policy sets x loads x seeds; resumable; report with 95% CIs across seeds."""
    from llmsched.bench.executors import Executor, LocalPool, RayPool, RunFailed
    from llmsched.bench.report import check_out_dir
    from llmsched.bench.runlog import RunLog
    from llmsched.bench.sweep import load_sweep, plan_sweep, run_sweep
    from llmsched.bench.sweep_report import write_sweep_report

    t0 = time.perf_counter()
    check_out_dir(out, keep=("runs.jsonl",))
    spec, scenarios = load_sweep(file)
    if calibration is not None:
        from llmsched.model.calibration import load_calibration

        cal = load_calibration(calibration)
        scenarios = [sc.with_calibration(cal) for sc in scenarios]
    plan = plan_sweep(spec, scenarios, traces)
    log = RunLog(out / "runs.jsonl")
    log.load() if resume else log.reset()
    _note_skipped(plan.skipped)
    done = sum(c.run_id in log.runs for c in plan.cells)
    executor: Executor = RayPool(ray) if ray else LocalPool(jobs)
    err_console.print(f"sweep {spec.name}: {len(plan.cells)} runs, {done} already in {log.path}"
                      f"{' (dropped a truncated last line)' if log.dropped_tail else ''}; on {executor.name}",
                      highlight=False)
    try:
        with executor, _progress(transient=False) as progress:
            records = run_sweep(plan, log, executor, progress=progress)
    except (RunFailed, RuntimeError) as e:
        fail(f"{e} (finished runs are kept in {log.path}; run again to resume)")
    except KeyboardInterrupt:
        err_console.print(f"interrupted: {len(log.runs)} finished runs are kept in {log.path}; run the same "
                          "command again to resume", highlight=False)
        raise typer.Exit(130) from None
    files = write_sweep_report(out, spec.name, records, scenarios, plan.skipped, executor.name)
    err_console.print(f"{len(records)} runs ({len(records) - done} new) in {time.perf_counter() - t0:.1f} s; "
                      f"report: {files[0]}", highlight=False)
    _exit_if_skipped(plan.skipped)
