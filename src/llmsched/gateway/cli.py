"""`llmsched serve`: the gateway as a command (cli.py mounts `serve_cmd` lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from llmsched.aio import run_async, wait_for_stop_signal
from llmsched.gateway.config import ConfigError, GatewayConfig, build_config, load_config
from llmsched.gateway.server import Gateway, tune_gc


async def start_emulators(n: int, **kw: Any) -> list[tuple[Any, str]]:
    """Start `n` in-process engine emulators on loopback ports (`kw` go to `EmulatorServer`); (server, url)s."""
    try:
        from llmsched.emulator import EmulatorServer  # type: ignore[attr-defined]
    except ImportError as e:
        raise RuntimeError(f"--emulated needs llmsched.emulator.EmulatorServer, which is not available: {e}") from e
    servers = []
    for _ in range(n):
        s = EmulatorServer(**kw)
        servers.append((s, await s.start("127.0.0.1", 0)))
    return servers


def parse_emulated_models(items: list[str]) -> list[tuple[str, str, int]]:
    """`--emulated-model NAME=PRESET:N` values (`PRESET` a model preset, `:N` default 1) -> (name, preset, n)."""
    from llmsched.model.presets import get_llm

    out = []
    for item in items:
        name, eq, rest = item.partition("=")
        preset, colon, count = rest.partition(":")
        if not eq or not name or not preset or (colon and not (count.isdigit() and int(count) >= 1)):
            raise ValueError(f"--emulated-model {item!r}: expected NAME=PRESET or NAME=PRESET:N with N >= 1")
        try:
            get_llm(preset)
        except ValueError as e:
            raise ValueError(f"--emulated-model {item!r}: {e}") from None
        out.append((name, preset, int(count or 1)))
    return out


async def run_gateway(cfg: GatewayConfig, host: str, port: int, emulated: int = 0, speed: float = 1.0,
                      models: list[tuple[str, str, int]] | None = None) -> None:
    """Run until SIGINT/SIGTERM, then drain and stop (graceful shutdown). `emulated` in-process emulators of the
    default preset, plus, for each (name, preset, n) of `models`, n emulators of `preset` serving `name`."""
    emus = await start_emulators(emulated, speed=speed) if emulated else []
    for name, preset, n in models or ():
        emus += await start_emulators(n, speed=speed, model=preset, served_model_name=name)
    if emus:
        cfg = cfg.model_copy(update={"backends": [*cfg.backends, *(u.rstrip("/") for _, u in emus)]})
    gw = Gateway(cfg)
    url = await gw.start(host, port)
    tune_gc()
    typer.echo(f"llmsched gateway on {url} -> {', '.join(cfg.backends) or '(no backends yet)'} "
               f"[request policy {cfg.request_policy.name}, router {cfg.router.name}]")
    try:
        await wait_for_stop_signal()
    finally:
        typer.echo(f"draining ({gw.dispatcher.queued} queued, {gw.dispatcher.in_flight} in flight)...")
        await gw.stop(drain=True)
        for e, _ in emus:
            await e.stop()


def serve_cmd(
    backend: Annotated[list[str] | None, typer.Option("--backend", help="backend base URL (repeatable)")] = None,
    emulated: Annotated[int, typer.Option("--emulated", min=0, help="start N in-process emulated engines")] = 0,
    emulated_model: Annotated[list[str] | None, typer.Option(
        "--emulated-model", help="start in-process emulated engines serving a model: NAME=PRESET[:N] (N engines "
        "of model preset PRESET, served as NAME; default 1); repeatable, e.g. --emulated-model a=llama-3.1-8b:2 "
        "--emulated-model b=llama-2-13b")] = None,
    emulator_speed: Annotated[float, typer.Option("--emulator-speed", min=0.001,
                                                  help="emulated seconds per real second (--emulated)")] = 1.0,
    request_policy: Annotated[str | None, typer.Option("--request-policy", help="admission-queue policy")] = None,
    router: Annotated[str | None, typer.Option("--router", help="instance-level router")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML configuration file")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    record: Annotated[Path | None, typer.Option("--record", help="append one JSON line per finished request "
                                                "to this file (docs/calibration.md)")] = None,
) -> None:
    """Run the OpenAI-compatible gateway in front of vLLM/SGLang (or emulated) engines."""
    overrides: dict[str, Any] = {}
    if request_policy:
        overrides["request_policy"] = {"name": request_policy}
    if router:
        overrides["router"] = {"name": router}
    try:
        models = parse_emulated_models(emulated_model or [])
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    emulating = bool(emulated or models)
    if record is not None:  # emulated engines run `--emulator-speed` times faster than the recorded clock
        overrides["record"] = {"path": str(record), "time_scale": emulator_speed if emulating else 1.0}
    try:
        if config is not None:
            cfg = load_config(config, overrides)
        else:
            cfg = build_config({}, overrides, source="command line")
        if backend:
            cfg = build_config({**cfg.model_dump(), "backends": [*cfg.backends, *backend]}, source="--backend")
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not cfg.backends and not emulating:
        typer.echo("error: give --backend URL (repeatable), --emulated N, --emulated-model NAME=PRESET[:N], or "
                   "backends: in --config", err=True)
        raise typer.Exit(2)
    try:
        run_async(run_gateway(cfg, host, port, emulated, emulator_speed, models))
    except (RuntimeError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
