"""The `llmsched` command line: simulate, compare, sweep, serve, emulate, and the preset listings."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from llmsched.bench.calibrate_cli import calibrate_cmd
from llmsched.bench.cli import compare_cmd, scenarios_cmd, sweep_cmd
from llmsched.emulator.cli import emulate_cmd
from llmsched.gateway.cli import serve_cmd

app = typer.Typer(
    help="Multi-layer scheduling for LLM serving: simulate policies on a cluster model, or serve them in front "
    "of real engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


def _fail(msg: str) -> None:
    console.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(2)


def _json_arg(value: str | None, what: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        _fail(f"{what} is not valid JSON ({e.msg} at column {e.colno}): {value!r}")
    if not isinstance(out, dict):
        _fail(f"{what} must be a JSON object, got {value!r}")
    return out


@app.command()
def simulate(
    trace: Annotated[Path | None, typer.Option(help="trace file (Azure CSV, Mooncake JSONL, BurstGPT CSV, a "
                                              "`serve --record` recording)")] = None,
    synthetic: Annotated[str | None, typer.Option(help="synthetic workload: chat, code, mixed, prefix-heavy, ...")] = None,
    trace_format: Annotated[str, typer.Option(help="trace format: auto, azure, mooncake, burstgpt, record")] = "auto",
    rate: Annotated[float | None, typer.Option(help="synthetic arrivals per second")] = None,
    num_requests: Annotated[int | None, typer.Option(help="number of requests (synthetic) / first N (trace)")] = None,
    rate_scale: Annotated[float, typer.Option(help="speed the trace's arrivals up by this factor")] = 1.0,
    window: Annotated[str | None, typer.Option(help="keep arrivals in START:END seconds")] = None,
    workload_params: Annotated[str | None, typer.Option(help="generator parameters as a JSON object")] = None,
    model: Annotated[str, typer.Option(help="LLM preset (see `llmsched presets`)")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU preset")] = "h100",
    tp: Annotated[int | None, typer.Option(help="tensor-parallel degree (default: the model preset's)")] = None,
    instances: Annotated[int, typer.Option(help="engine instances")] = 1,
    request_policy: Annotated[str, typer.Option(help="request-level policy")] = "fcfs",
    request_params: Annotated[str | None, typer.Option(help="its parameters as a JSON object")] = None,
    router: Annotated[str, typer.Option(help="instance-level router")] = "round-robin",
    router_params: Annotated[str | None, typer.Option(help="its parameters as a JSON object")] = None,
    expert_policy: Annotated[str | None, typer.Option(help="expert placer (MoE models)")] = None,
    expert_params: Annotated[str | None, typer.Option(help="its parameters as a JSON object")] = None,
    metrics_interval: Annotated[float, typer.Option(help="router snapshot refresh interval, s (0 = live)")] = 0.0,
    max_num_batched_tokens: Annotated[int | None, typer.Option(help="engine token budget per iteration")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="engine sequences per iteration")] = None,
    no_prefix_caching: Annotated[bool, typer.Option(help="disable automatic prefix caching")] = False,
    seed: Annotated[int, typer.Option(help="seed: the same seed gives the same numbers")] = 0,
    calibration: Annotated[Path | None, typer.Option(help="cost-model calibration file (docs/calibration.md)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Simulate one cluster on one workload and print its latency and throughput (simulated figures)."""
    from pydantic import ValidationError

    from llmsched.engine.config import EngineConfig
    from llmsched.model.calibration import load_calibration
    from llmsched.sim.config import SimConfig
    from llmsched.sim.run import simulate as run_sim
    from llmsched.workload.spec import WorkloadSpec

    if trace is not None and synthetic is not None:
        _fail("give --trace or --synthetic, not both")
    win = None
    if window:
        try:
            a, b = window.split(":")
            win = (float(a), float(b))
        except ValueError:
            _fail(f"--window must be START:END in seconds, got {window!r}")
    try:
        if trace is not None:
            if not trace.exists():
                _fail(f"trace file not found: {trace}")
            wl = WorkloadSpec(kind="trace", name=trace_format, path=str(trace), limit=num_requests,
                              rate_scale=rate_scale, window=win, params=_json_arg(workload_params, "--workload-params"))
        else:
            wl = WorkloadSpec(kind="synthetic", name=synthetic or "chat", rate=rate, num_requests=num_requests or 1000,
                              rate_scale=rate_scale, window=win, params=_json_arg(workload_params, "--workload-params"))
        eng: dict[str, Any] = {"enable_prefix_caching": not no_prefix_caching}
        if max_num_batched_tokens:
            eng["max_num_batched_tokens"] = max_num_batched_tokens
        if max_num_seqs:
            eng["max_num_seqs"] = max_num_seqs
        cfg = SimConfig(
            workload=wl, model=model, gpu=gpu, tp=tp, instances=instances, engine=EngineConfig(**eng),
            request_policy=request_policy, request_params=_json_arg(request_params, "--request-params"),
            router=router, router_params=_json_arg(router_params, "--router-params"),
            expert_policy=expert_policy, expert_params=_json_arg(expert_params, "--expert-params"),
            metrics_interval_s=metrics_interval, seed=seed,
            calibration=load_calibration(calibration) if calibration is not None else None,
        )
        res = run_sim(cfg, progress=not as_json and sys.stderr.isatty())
    except (ValueError, ValidationError, FileNotFoundError) as e:
        _fail(str(e))
    if as_json:
        print(json.dumps(res, indent=2))
        return
    print_result(res)


def _dur(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 10 else f"{seconds:.1f} s"


def print_result(res: dict[str, Any]) -> None:
    s = res["simulated"]
    out = Console()
    title = (f"simulated: {s['instances']} x {s['model']} on {s['gpu']} (tp {s['tp']}), request={s['request_policy']}"
             f" router={s['router']}" + (f" expert={s['expert_policy']}" if s.get("expert_policy") else ""))
    t = Table(title=title)
    for col in ("class", "count", "TTFT mean", "TTFT p99", "TPOT mean", "TPOT p99", "E2E mean", "E2E p99"):
        t.add_column(col, justify="right")

    def row(name: str, d: dict[str, Any], count: int) -> None:
        t.add_row(name, str(count), *(_dur(d[k][q]) for k in ("ttft_s", "tpot_s", "e2e_s") for q in ("mean", "p99")))

    row("all", res, res["completed"])
    for c, d in res["by_class"].items():
        row(c, d, d["count"])
    out.print(t)
    out.print(
        f"completed {res['completed']}/{res['submitted']} (rejected {res['rejected']}) in {res['sim_duration_s']:.1f} s"
        f" simulated; output {res['output_throughput_tok_s']:.0f} tok/s, {res['request_throughput_rps']:.2f} req/s;"
        f" prefix hit rate {res['prefix_hit_rate']:.1%}; preemptions {res['preemptions']};"
        f" wall {res['wall_s']:.2f} s ({res['sim_requests_per_wall_s']:.0f} simulated requests per wall-second)"
    )
    if "expert_balancedness" in res:
        out.print(f"expert balancedness {res['expert_balancedness']:.3f}, all-to-all "
                  f"{res.get('a2a_bytes_per_token', 0):.0f} B/token, migrations {res.get('expert_migrations', 0)}")


@app.command()
def presets() -> None:
    """List the GPU and LLM presets and the registered policies of each layer."""
    from llmsched.model import list_gpus, list_llms
    from llmsched.policies.expert import EXPERT_PLACERS
    from llmsched.policies.instance import ROUTERS
    from llmsched.policies.request import REQUEST_POLICIES

    out = Console()
    out.print("[bold]GPUs:[/] " + ", ".join(list_gpus()))
    out.print("[bold]models:[/] " + ", ".join(list_llms()))
    out.print("[bold]request policies:[/] " + ", ".join(REQUEST_POLICIES.names()))
    out.print("[bold]routers:[/] " + ", ".join(ROUTERS.names()))
    out.print("[bold]expert placers:[/] " + ", ".join(EXPERT_PLACERS.names()))


app.command("compare")(compare_cmd)
app.command("scenarios")(scenarios_cmd)
app.command("sweep")(sweep_cmd)
app.command("serve")(serve_cmd)
app.command("emulate")(emulate_cmd)
app.command("calibrate")(calibrate_cmd)


if __name__ == "__main__":  # pragma: no cover
    app()
