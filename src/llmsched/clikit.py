"""What every `llmsched` command shares: lazily loaded commands and one-line errors for user mistakes.

- `LazyGroup` lists commands whose module is imported only when that command runs, so `llmsched --help` and
  `llmsched presets` do not pay for the simulator, matplotlib or aiohttp (docs/architecture.md, "CLI").
- Every error a user can cause ends as one `error: ...` line (plus a `see --help` hint for usage errors),
  with exit status 2, in every command: click's usage errors, pydantic `ValidationError`s (the failing
  field is named by the command's flag when it has one, else by its config key), our own `ValueError`s
  (scenario, workload, gateway config, registry look-ups) and file errors. Anything else is a bug and keeps
  its traceback; `LLMSCHED_DEBUG=1` shows the traceback of a user error too.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer._click.core import Command, Context, HelpFormatter, Parameter  # typer vendors click
from typer._click.exceptions import ClickException, UsageError
from typer.core import TyperCommand, TyperGroup
from typer.main import get_command_from_info
from typer.models import CommandInfo

from llmsched.core.names import format_validation

DEBUG_ENV = "LLMSCHED_DEBUG"


class UserError(ClickException):
    """A mistake in the user's input, shown as one line with exit status 2."""

    exit_code = 2


def fail(msg: str) -> NoReturn:
    raise UserError(msg)


def _option_names(cmd: Any) -> list[str]:
    names: list[str] = []
    for p in getattr(cmd, "params", []) or []:
        names += [o for o in getattr(p, "opts", []) if o.startswith("--")]
        names += [o for o in getattr(p, "secondary_opts", []) if o.startswith("--")]
    return names


# SimConfig / EngineConfig fields whose flag is not simply --field-name
_FIELD_FLAGS = {"enable_prefix_caching": "--prefix-caching", "metrics_interval_s": "--metrics-interval",
                "expert_policy": "--expert-policy", "name": "--synthetic", "path": "--trace",
                "engine_kind": "--engine"}


def _flag_for(loc: Sequence[Any], options: Sequence[str]) -> str | None:
    for part in reversed([str(x) for x in loc if isinstance(x, str)]):
        for cand in (_FIELD_FLAGS.get(part), "--" + part.replace("_", "-"),
                     "--" + part.removesuffix("_s").replace("_", "-")):
            if cand and cand in options:
                return cand
    return None


def describe(e: BaseException, options: Sequence[str] = ()) -> str | None:
    """One line for an exception caused by user input, or None for a bug (which keeps its traceback)."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        return format_validation(e, _model_named(e.title), key_of=lambda loc: _flag_for(loc, options))
    if isinstance(e, ValueError):  # our config, scenario, workload and registry errors; JSON decoding
        return " ".join(str(e).split("\n")[:2]).strip() or type(e).__name__
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return f"{e.filename}: {e.strerror}" if e.filename else str(e)
    return None


def _model_named(title: str) -> Any:
    """The config class a ValidationError is about, so an unknown key can get the closest valid one."""
    from llmsched.engine.config import EngineConfig
    from llmsched.sim.config import SimConfig
    from llmsched.workload.spec import WorkloadSpec

    return {c.__name__: c for c in (SimConfig, EngineConfig, WorkloadSpec)}.get(title)


def quiet_flags(cmd: Command) -> Command:
    """No `<bool>` type column for on/off flags in the help (typer prints one); returns `cmd`."""
    help_option = cmd.get_help_option(Context(cmd))  # cached by the command once made
    for p in [*cmd.params, *([help_option] if help_option is not None else [])]:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return cmd


class LazyCommand(TyperCommand):
    """A command listed by name and short help; its module is imported when the command runs or shows help."""

    def __init__(self, name: str, target: str, short_help: str, group: LazyGroup) -> None:
        super().__init__(name=name, help=short_help, short_help=short_help)
        self._target = target
        self._group = group
        self._real: Command | None = None

    def real(self) -> Command:
        if self._real is None:
            module, attr = self._target.split(":")
            fn = getattr(importlib.import_module(module), attr)
            self._real = get_command_from_info(CommandInfo(name=self.name, callback=fn),
                                               pretty_exceptions_short=True,
                                               rich_markup_mode=self._group.rich_markup_mode)
            quiet_flags(self._real)
        return self._real

    def make_context(self, info_name: str | None, args: list[str], parent: Context | None = None,
                     **extra: Any) -> Context:
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def get_params(self, ctx: Context) -> list[Parameter]:
        return self.real().get_params(ctx)

    @property
    def params(self) -> list[Parameter]:  # type: ignore[override]
        return self.real().params if self._real is not None else []

    @params.setter
    def params(self, value: list[Parameter]) -> None:
        pass


class LazyGroup(TyperGroup):
    """The `llmsched` group: eager and lazy commands, and the one place where user errors become one line."""

    lazy: dict[str, tuple[str, str]] = {}  # name -> ("module:function", short help); set by the app

    def list_commands(self, ctx: Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None and cmd_name in self.lazy:
            target, short = self.lazy[cmd_name]
            cmd = LazyCommand(cmd_name, target, short, self)
            self.commands[cmd_name] = cmd
        elif cmd is not None and not isinstance(cmd, LazyCommand):
            quiet_flags(cmd)
        return cmd

    def format_help(self, ctx: Context, formatter: HelpFormatter) -> None:
        quiet_flags(self)
        super().format_help(ctx, formatter)

    def resolve_command(self, ctx: Context, args: list[str]) -> Any:
        for name in self.lazy:  # so that typo suggestions include the lazy commands
            self.get_command(ctx, name)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if os.environ.get(DEBUG_ENV):
                raise
            sub = self.commands.get(ctx.invoked_subcommand or "")
            if isinstance(sub, LazyCommand):
                sub = sub.real()
            msg = describe(e, _option_names(sub))
            if msg is None:
                raise
            raise UserError(msg) from None

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as e:
            show_error(e)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("aborted", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def show_error(e: ClickException) -> None:
    """`error: ...` on one line; usage errors add where to find the command's help."""
    msg = " ".join(e.format_message().split("\n")).replace("Input should be", "must be")
    print(f"error: {msg}", file=sys.stderr)
    ctx = getattr(e, "ctx", None)
    if isinstance(e, UsageError) and ctx is not None:
        print(f"  (see `{ctx.command_path} --help`)", file=sys.stderr)
