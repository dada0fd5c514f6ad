"""`llmsched emulate`: one emulated vLLM instance on a port (cli.py mounts `emulate_cmd` lazily)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmsched.aio import run_async, wait_for_stop_signal
from llmsched.engine.config import EngineConfig


def emulate_cmd(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = 8000,
    model: Annotated[str, typer.Option(help="Model preset priced by the cost model.")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU preset.")] = "h100",
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree (default: the model's).")] = None,
    speed: Annotated[
        float, typer.Option(help="Emulated seconds per real second (2.0 = twice real time).")
    ] = 1.0,
    request_policy: Annotated[str, typer.Option(help="Request-level policy of the engine's queue.")] = "fcfs",
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(help="Model name(s) clients send (default: --model); several as vLLM's: after one flag "
                          "(--served-model-name a b) or the flag repeated; all accepted and listed, the first "
                          "named in responses and metrics."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic output text.")] = 0,
    max_model_len: Annotated[int | None, typer.Option(min=1, help="Context window in tokens.")] = None,
    max_num_seqs: Annotated[int, typer.Option(help="Most sequences in one iteration (vLLM's).")] = 256,
    max_num_batched_tokens: Annotated[
        int, typer.Option(help="Token budget of one iteration (vLLM's).")
    ] = 8192,
    block_size: Annotated[int, typer.Option(help="KV block size in tokens.")] = 16,
    enable_prefix_caching: Annotated[bool, typer.Option(help="Automatic prefix caching.")] = True,
    calibration: Annotated[
        str | None, typer.Option(help="Cost-model calibration file (docs/calibration.md).")
    ] = None,
    enable_lora: Annotated[bool, typer.Option(help="Serve LoRA adapters (on with --lora-modules/--max-loras).")] = False,
    lora_modules: Annotated[
        list[str] | None,
        typer.Option(help="LoRA adapters, vLLM's form: name=path or JSON {\"name\", \"path\"}; several after one "
                          "flag (--lora-modules a=/p/a b=/p/b) or the flag repeated."),
    ] = None,
    max_loras: Annotated[int | None, typer.Option(min=1, help="Adapters in one batch / GPU slots (vLLM's).")] = None,
    max_cpu_loras: Annotated[
        int | None, typer.Option(min=1, help="Adapters cached in CPU memory (vLLM's; default --max-loras).")
    ] = None,
    extra: Annotated[list[str] | None, typer.Argument(hidden=True)] = None,
) -> None:
    """Serve vLLM's OpenAI-compatible API and /metrics, driven in real time by the engine model."""
    from llmsched.emulator.lora import parse_lora_modules
    from llmsched.emulator.server import EmulatorServer
    from llmsched.engine.lora import LoraConfig

    # Values after a several-values flag arrive as `extra`: LoRA modules are name=path or JSON, model names not.
    extra_modules = [x for x in extra or () if "=" in x or x.lstrip().startswith("{")]
    extra_names = [x for x in extra or () if x not in extra_modules]
    stray = (extra_modules if not lora_modules else []) + (extra_names if not served_model_name else [])
    if stray:
        raise typer.BadParameter(f"unexpected argument {stray[0]!r}")
    lora = None
    if enable_lora or lora_modules or max_loras or max_cpu_loras:
        lora = LoraConfig(max_loras=max_loras or 1, max_cpu_loras=max_cpu_loras)
    cfg = EngineConfig(
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
        block_size=block_size,
        enable_prefix_caching=enable_prefix_caching,
        lora=lora,
    )
    try:
        modules = parse_lora_modules([*(lora_modules or ()), *extra_modules])
        cost = None
        if calibration is not None:
            from llmsched.model import build_cost_model
            from llmsched.model.calibration import load_calibration

            cost = build_cost_model(model, gpu, tp, **load_calibration(calibration).knobs())
        server = EmulatorServer(
            model=model,
            gpu=gpu,
            tp=tp,
            speed=speed,
            request_policy=request_policy,
            engine_config=cfg,
            served_model_name=[*(served_model_name or ()), *extra_names],
            seed=seed,
            max_model_len=max_model_len,
            cost=cost,
            lora_modules=modules,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None

    async def serve() -> None:
        url = await server.start(host, port)
        names = ", ".join(server.adapters.paths)
        typer.echo(f"llmsched emulator: {server.served_model_name} on {gpu} at {url} (speed {speed}x)"
                   + (f", LoRA adapters {names}" if names else ""))
        try:
            await wait_for_stop_signal()
        finally:
            await server.stop()

    run_async(serve())
