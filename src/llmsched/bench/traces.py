"""Where trace files are looked up, and what happens when one is missing.

The public traces ship in the package (`builtin:azure-conv`, `builtin:azure-code`, `builtin:mooncake-conv`,
`builtin:sample`; `llmsched traces` lists them), so the built-in scenarios need no file outside the
repository. A folder given by `--traces DIR` or `$LLMSCHED_TRACES` overrides them: a `builtin:NAME` whose
file exists there under the public release's layout (e.g. `azure-2023/AzureLLMInferenceTrace_conv.csv`)
is read from there; a scenario naming that public path means the same trace under the same rules. Other
paths are looked up in the trace folders (also ../shared/traces). A workload whose file is absent is skipped
with a note that the report repeats (and `compare`/`sweep` exit with status 1): never silently, so nobody
mistakes a shorter table for a complete one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmsched.bench.scenario import Scenario
from llmsched.workload.traces.files import BUILTIN_PREFIX, BUILTIN_TRACES

ENV_VAR = "LLMSCHED_TRACES"


@dataclass(frozen=True, slots=True)
class Skipped:
    scenario: str
    workload: str
    reason: str


def _repo_root() -> Path | None:
    root = Path(__file__).resolve().parents[3]
    return root if (root / "pyproject.toml").is_file() else None


def override_dirs(traces: Path | None = None) -> list[Path]:
    """Folders the user named: --traces, then $LLMSCHED_TRACES."""
    dirs: list[Path] = []
    if traces is not None:
        dirs.append(Path(traces))
    if os.environ.get(ENV_VAR):
        dirs.append(Path(os.environ[ENV_VAR]))
    return dirs


def trace_dirs(traces: Path | None = None) -> list[Path]:
    """Folders searched, in order: --traces, $LLMSCHED_TRACES, ../shared/traces from the current directory,
    then from the repository root (for an editable install run from elsewhere)."""
    dirs = override_dirs(traces)
    dirs.append(Path.cwd().parent / "shared" / "traces")
    root = _repo_root()
    if root is not None:
        dirs.append(root.parent / "shared" / "traces")
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def find_trace(path: str, traces: Path | None = None) -> Path | None:
    p = Path(path).expanduser()
    if p.is_absolute():
        return p if p.is_file() else None
    for d in trace_dirs(traces):
        if (d / p).is_file():
            return (d / p).resolve()
    return None


def resolve_one(path: str, traces: Path | None = None) -> str | None:
    """The file (or `builtin:NAME`) a scenario's trace path reads, or None when it is nowhere."""
    path = path.strip()
    packaged = next((t for t in BUILTIN_TRACES.values() if t.original and t.original == path), None)
    if packaged is not None:
        path = BUILTIN_PREFIX + packaged.name  # a packaged trace named by its public path: the same rules
    if path.startswith(BUILTIN_PREFIX):
        t = BUILTIN_TRACES.get(path[len(BUILTIN_PREFIX):])
        if t is not None and t.original:
            for d in override_dirs(traces):
                if (d / t.original).is_file():
                    return str((d / t.original).resolve())
        return path  # an unknown name fails when loaded, with the list of known ones
    found = find_trace(path, traces)
    return None if found is None else str(found)


def resolve_traces(sc: Scenario, traces: Path | None = None) -> tuple[Scenario, list[Skipped]]:
    """The scenario with trace paths made absolute, minus the workloads whose trace is absent."""
    kept, skipped = [], []
    for w in sc.workloads:
        if w.kind != "trace" or not (w.requires_trace or (w.path or "").startswith(BUILTIN_PREFIX)):
            kept.append(w)
            continue
        if not w.path:
            skipped.append(Skipped(sc.name, w.label, "requires_trace is set but no path is given"))
            continue
        # A path may list several files separated by commas (a mix of sources); every one must exist.
        parts = [p.strip() for p in w.path.split(",") if p.strip()]
        found = [resolve_one(p, traces) for p in parts]
        missing = [p for p, f in zip(parts, found, strict=True) if f is None]
        if missing:
            where = ", ".join(str(d) for d in trace_dirs(traces))
            skipped.append(Skipped(sc.name, w.label, f"trace {', '.join(missing)} not found in {where} "
                                   f"(use --traces DIR or ${ENV_VAR})"))
            continue
        kept.append(w.model_copy(update={"path": ",".join(str(f) for f in found)}))
    out = sc.model_copy(update={"workloads": kept})
    out._source = sc.source
    return out, skipped
