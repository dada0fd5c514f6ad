"""The `llmsched` command line: simulate, compare, sweep, serve, emulate, traces, vllm-diff and the preset listings.

Start-up stays fast: this module imports only typer; every command imports what it needs in its body, and
the commands kept in other modules (compare, sweep, serve, emulate) are loaded only when they run
(`clikit.LazyGroup`). Errors a user can cause are one `error:` line naming the flag or key, for every
command, without code here: `clikit.LazyGroup.invoke` turns them into that line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from llmsched.clikit import LazyGroup, fail


class _Group(LazyGroup):
    lazy = {
        "compare": ("llmsched.bench.cli:compare_cmd",
                    "Compare policy sets on built-in or YAML scenarios (simulated); tables plus a report folder."),
        "scenarios": ("llmsched.bench.cli:scenarios_cmd", "List the built-in scenarios."),
        "sweep": ("llmsched.bench.cli:sweep_cmd",
                  "Run a grid of scenarios x policy sets x loads x seeds; resumable; 95% CIs across seeds."),
        "serve": ("llmsched.gateway.cli:serve_cmd",
                  "Run the OpenAI-compatible gateway in front of vLLM/SGLang (or emulated) engines."),
        "emulate": ("llmsched.emulator.cli:emulate_cmd",
                    "Serve vLLM's OpenAI-compatible API and /metrics, driven in real time by the engine model."),
        "calibrate": ("llmsched.bench.calibrate_cli:calibrate_cmd",
                      "Fit the cost model's knobs to a gateway recording or live /metrics; writes a calibration file."),
    }


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"llmsched {version('llmsched')}")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
            typer.echo("llmsched (not installed)")
        raise typer.Exit()


app = typer.Typer(
    cls=_Group,
    help="Multi-layer scheduling for LLM serving: simulate policies on a cluster model, or serve them in front "
    "of real engines. Every figure the simulator prints is simulated, labelled with the model and GPU preset.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Multi-layer scheduling for LLM serving (see the commands below)."""


def _json_arg(value: str | None, what: str) -> dict[str, Any]:
    import json

    if not value:
        return {}
    try:
        out = json.loads(value)
    except json.JSONDecodeError as e:
        fail(f"{what} is not valid JSON ({e.msg} at column {e.colno}): {value!r}")
    if not isinstance(out, dict):
        fail(f"{what} must be a JSON object, got {value!r}")
    return out


# Kept in step with the registries by tests/test_cli.py (listing them here keeps --help free of imports).
GENERATOR_NAMES = "burstgpt-like, chat, code, mixed, phases, prefix-heavy"
REQUEST_POLICY_NAMES = "ewsjf, fcfs, gimbal, priority, sjf, sjf-aging"
ROUTER_NAMES = ("dynamo-cost, gimbal, least-kv, least-requests, linear, llmd-weighted, lmetric, lora-affinity, "
                "power-of-two, prefix, random, round-robin, session, sglang-cache-aware")
EXPERT_PLACER_NAMES = "affinity, eplb, eplb-online, hotspot, static"
TRACE_NAMES = "builtin:azure-code, builtin:azure-conv, builtin:mooncake-conv, builtin:sample"


@app.command()
def simulate(
    trace: Annotated[str | None, typer.Option(
        help=f"trace file (Azure 2023 CSV, Mooncake JSONL, BurstGPT CSV, a `serve --record` "
        f"recording; .gz/.xz too) or {TRACE_NAMES} "
        "(see `llmsched traces`)")] = None,
    synthetic: Annotated[str | None, typer.Option(
        help=f"synthetic workload (default chat): {GENERATOR_NAMES}")] = None,
    trace_format: Annotated[str, typer.Option(help="trace format: auto, azure, mooncake, burstgpt, "
                                                          "record")] = "auto",
    served_model: Annotated[str | None, typer.Option(help="--trace of a multi-model `serve --record` recording: "
                                                     "replay this served model's rows")] = None,
    rate: Annotated[float | None, typer.Option(
                                               help="mean arrivals per second (synthetic; a trace's target rate)")] = None,
    num_requests: Annotated[int | None, typer.Option(min=1, help="number of requests (synthetic, default 1000) / "
                                                     "first N (trace)")] = None,
    rate_scale: Annotated[float, typer.Option(
                                              help="speed the arrivals up by this factor")] = 1.0,
    window: Annotated[str | None, typer.Option(help="keep arrivals in START:END seconds")] = None,
    workload_params: Annotated[str | None, typer.Option(help="generator parameters as a JSON object")] = None,
    model: Annotated[str, typer.Option(help="LLM preset (see `llmsched presets`)")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU preset: a100-80g, h100, h200")] = "h100",
    tp: Annotated[int | None, typer.Option(min=1, help="tensor-parallel degree (default: the model preset's)")] = None,
    instances: Annotated[int, typer.Option(min=1, help="engine instances")] = 1,
    request_policy: Annotated[str, typer.Option(help=f"request-level policy: {REQUEST_POLICY_NAMES}")] = "fcfs",
    request_params: Annotated[str | None, typer.Option(help="its parameters as a JSON object")] = None,
    router: Annotated[str, typer.Option(help=f"instance-level router: {ROUTER_NAMES}")] = "round-robin",
    router_params: Annotated[str | None, typer.Option(help="its parameters as a JSON object")] = None,
    expert_policy: Annotated[str | None, typer.Option(
        help=f"expert placer (MoE models; default static): {EXPERT_PLACER_NAMES}")] = None,
    expert_params: Annotated[str | None, typer.Option(help="its parameters as a JSON object")] = None,
    metrics_interval: Annotated[float, typer.Option(min=0, help="router snapshot refresh interval, s (0 = live)")] = 0.0,
    max_num_batched_tokens: Annotated[int | None, typer.Option(min=1, help="engine token budget per iteration "
                                                               "(vLLM default 8192)")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(min=1, help="engine sequences per iteration "
                                                     "(vLLM default 256)")] = None,
    kv_capacity_tokens: Annotated[int | None, typer.Option(
        help="KV cache per instance in tokens (overrides the model/GPU preset's)")] = None,
    prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching",
                                                 help="automatic prefix caching")] = True,
    engine: Annotated[str, typer.Option(help="llmsched (fast engine model) or vllm (vLLM's real scheduler, "
                                        "exact, slower; needs llmsched\\[vllm])")] = "llmsched",
    seed: Annotated[int, typer.Option(min=0, help="seed: the same seed gives the same numbers")] = 0,
    calibration: Annotated[Path | None, typer.Option(help="cost-model calibration file (docs/calibration.md)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Simulate one cluster on one workload and print its latency and throughput (simulated figures)."""
    from llmsched.engine.config import EngineConfig
    from llmsched.model.calibration import load_calibration
    from llmsched.sim.config import SimConfig
    from llmsched.sim.run import simulate as run_sim
    from llmsched.vllm.harness import VllmMissing
    from llmsched.workload.spec import WorkloadSpec

    if trace is not None and synthetic is not None:
        fail("give --trace or --synthetic, not both")
    win = None
    if window:
        try:
            a, b = window.split(":")
            win = (float(a), float(b))
        except ValueError:
            fail(f"--window must be START:END in seconds, got {window!r}")
    if served_model is not None and trace is None:
        fail("--served-model selects the rows of a --trace recording")
    if trace is not None:
        params = _json_arg(workload_params, "--workload-params")
        if served_model is not None:
            params = {**params, "model": served_model}
        wl = WorkloadSpec(kind="trace", name=trace_format, path=trace, limit=num_requests, rate=rate,
                          rate_scale=rate_scale, window=win, params=params)
    else:
        wl = WorkloadSpec(kind="synthetic", name=synthetic or "chat", rate=rate, num_requests=num_requests or 1000,
                          rate_scale=rate_scale, window=win, params=_json_arg(workload_params, "--workload-params"))
    eng: dict[str, Any] = {"enable_prefix_caching": prefix_caching}
    if max_num_batched_tokens is not None:
        eng["max_num_batched_tokens"] = max_num_batched_tokens
    if max_num_seqs is not None:
        eng["max_num_seqs"] = max_num_seqs
    if kv_capacity_tokens is not None:
        bs = EngineConfig().block_size
        if kv_capacity_tokens < bs:
            fail(f"--kv-capacity-tokens must be at least one block ({bs} tokens), got {kv_capacity_tokens}")
        eng["num_gpu_blocks"] = kv_capacity_tokens // bs
    cfg = SimConfig(
        workload=wl, model=model, gpu=gpu, tp=tp, instances=instances, engine=EngineConfig(**eng),
        request_policy=request_policy, request_params=_json_arg(request_params, "--request-params"),
        router=router, router_params=_json_arg(router_params, "--router-params"),
        expert_policy=expert_policy, expert_params=_json_arg(expert_params, "--expert-params"),
        metrics_interval_s=metrics_interval, seed=seed, engine_kind=engine,
        calibration=load_calibration(calibration) if calibration is not None else None,
    )
    try:
        res = run_sim(cfg, progress=not as_json and sys.stderr.isatty())
    except VllmMissing as e:
        fail(str(e))
    if as_json:
        import json

        print(json.dumps(res, indent=2))
        return
    print_result(res)


def print_result(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from llmsched.bench.tables import cluster, fmt

    s = res["simulated"]
    out = Console()
    title = (f"simulated: {cluster(res)}; request={s['request_policy']} router={s['router']}"
             + (f" expert={s['expert_policy']}" if s.get("expert_policy") else ""))
    t = Table(title=title, caption="latencies in ms, as in `compare`'s tables")
    t.add_column("class", no_wrap=True)
    for col in ("count", "TTFT mean", "TTFT p99", "TPOT mean", "TPOT p99", "E2E mean", "E2E p99"):
        t.add_column(col, justify="right")  # short numbers, no unit in the cells: 80 columns fit

    def row(name: str, d: dict[str, Any], count: int) -> None:
        t.add_row(name, str(count), *(fmt(d[k][q] * 1000) for k in ("ttft_s", "tpot_s", "e2e_s")
                                      for q in ("mean", "p99")))

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
    offered = (s.get("workload") or {}).get("offered_rate_rps")
    if offered and res["request_throughput_rps"] < 0.8 * offered:
        out.print(f"[yellow]note:[/] requests arrived at {offered:.2f}/s but the cluster completed "
                  f"{res['request_throughput_rps']:.2f}/s: it is overloaded, so queues and latencies grow with the "
                  "run's length; lower --rate or add --instances for a steady state")
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

    for what, names in (("GPUs", list_gpus()), ("models", list_llms()),
                        ("request policies", REQUEST_POLICIES.names()), ("routers", ROUTERS.names()),
                        ("expert placers", EXPERT_PLACERS.names())):
        typer.echo(typer.style(f"{what}:", bold=True) + " " + ", ".join(names))  # plain echo: no rich import
    typer.echo(typer.style("built-in traces:", bold=True) + " " + TRACE_NAMES + " (`llmsched traces`)")


@app.command()
def traces() -> None:
    """List the traces shipped in the package (use them as --trace builtin:NAME or path: builtin:NAME)."""
    from rich.console import Console
    from rich.table import Table

    from llmsched.workload.traces.files import BUILTIN_TRACES, data_dir

    t = Table(title="built-in traces (licences and attribution: " + str(data_dir() / "ATTRIBUTION.md") + ")",
              title_justify="left")
    for col in ("name", "source (licence)", "what"):
        t.add_column(col)
    for tr in BUILTIN_TRACES.values():
        t.add_row(f"builtin:{tr.name}", f"{tr.source} ({tr.licence})", tr.description)
    Console().print(t)


@app.command("vllm-diff")
def vllm_diff(
    cases: Annotated[int, typer.Option(min=1, help="random workloads to compare")] = 20,
    seed: Annotated[int, typer.Option(min=0, help="seed of the first workload")] = 0,
    num_requests: Annotated[int, typer.Option(min=1, help="requests per workload")] = 20,
    policy: Annotated[str, typer.Option(help="fcfs, priority or both (alternating)")] = "both",
    max_num_batched_tokens: Annotated[int, typer.Option(min=1, help="token budget per step")] = 64,
    max_num_seqs: Annotated[int, typer.Option(min=1, help="sequences per step")] = 8,
    num_blocks: Annotated[int, typer.Option(min=1, help="usable KV blocks (small: preemptions)")] = 40,
    block_size: Annotated[int, typer.Option(min=1, help="KV block size")] = 16,
    long_prefill_token_threshold: Annotated[int, typer.Option(min=0, help="chunk cap; 0 = none")] = 0,
    prefix_caching: Annotated[bool, typer.Option("--prefix-caching/--no-prefix-caching",
                                                 help="automatic prefix caching")] = True,
    chunked_prefill: Annotated[bool, typer.Option("--chunked-prefill/--no-chunked-prefill",
                                                  help="chunked prefill")] = True,
    context: Annotated[int, typer.Option(min=0, help="steps shown before the first divergence")] = 3,
) -> None:
    r"""Check our engine model against vLLM's real scheduler step by step (needs llmsched\[vllm])."""
    from llmsched.vllm.diff import run_cli
    from llmsched.vllm.harness import Limits, VllmMissing

    if policy not in ("fcfs", "priority", "both"):
        fail(f"--policy must be fcfs, priority or both, got {policy!r}")
    try:
        lim = Limits(max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, block_size=block_size,
                     num_blocks=num_blocks, enable_chunked_prefill=chunked_prefill,
                     enable_prefix_caching=prefix_caching,
                     long_prefill_token_threshold=long_prefill_token_threshold)
        code = run_cli(cases, seed, num_requests, policy, lim, context)
    except VllmMissing as e:
        fail(str(e))
    raise typer.Exit(code)


if __name__ == "__main__":  # pragma: no cover
    app()
