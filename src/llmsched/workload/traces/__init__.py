"""Trace files: format detection, the `builtin:` samples, and mixing several files into one workload.

A trace path may list several files separated by commas; each file is one source with its own class label
(from `params["classes"]`, else derived from the file name, see `default_label`). Each source is shifted so
that its first request arrives at 0 and the sources are merged by arrival time, so a mix replays the sources
side by side (e.g. the Azure 2023 conversation and code traces as classes `conv` and `code`). Sources with
block ids get disjoint hash namespaces: ids of different files never alias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

from llmsched.core.hashing import ROOT
from llmsched.workload.columns import Columns
from llmsched.workload.errors import WorkloadError
from llmsched.workload.traces.azure import is_azure_header, load_azure
from llmsched.workload.traces.burstgpt import is_burstgpt_header, load_burstgpt
from llmsched.workload.traces.mooncake import load_mooncake
from llmsched.workload.traces.record import is_record_header, load_record

FORMATS = ("azure", "mooncake", "burstgpt", "record")
BUILTIN_PREFIX = "builtin:"

Loader = Callable[[Path, int, int], Columns]
_LOADERS: dict[str, Loader] = {
    "azure": lambda p, bs, root: load_azure(p),
    "mooncake": load_mooncake,
    "burstgpt": lambda p, bs, root: load_burstgpt(p),
    "record": load_record,
}


def builtin_names() -> list[str]:
    base = resources.files("llmsched").joinpath("data/traces")
    return sorted(p.name.rsplit(".", 1)[0] for p in base.iterdir() if p.name.endswith((".jsonl", ".csv")))


def resolve_path(path: str) -> Path:
    """A file path, or `builtin:NAME` for a trace shipped in the package (`src/llmsched/data/traces`)."""
    path = path.strip()
    if path.startswith(BUILTIN_PREFIX):
        name = path[len(BUILTIN_PREFIX) :]
        base = resources.files("llmsched").joinpath("data/traces")
        for ext in (".jsonl", ".csv"):
            p = base.joinpath(name + ext)
            if p.is_file():
                return Path(str(p))
        raise WorkloadError(f"unknown built-in trace {path!r}; known: {', '.join(builtin_names())}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise WorkloadError(f"trace file not found: {p}")
    return p


def detect_format(path: Path) -> str:
    """A gateway recording by its header line; else by extension (`.jsonl` -> mooncake), else by CSV header."""
    with path.open(encoding="utf-8") as f:
        first = f.readline().strip()
    if is_record_header(first):
        return "record"
    if path.suffix.lower() in (".jsonl", ".json"):
        return "mooncake"
    if is_azure_header(first):
        return "azure"
    if is_burstgpt_header(first):
        return "burstgpt"
    if first.startswith("{"):
        return "mooncake"
    raise WorkloadError.at(path, 1, f"cannot tell the trace format from header {first[:120]!r}; set name")


def default_label(path: Path) -> str:
    """`AzureLLMInferenceTrace_conv.csv` -> `conv`, `conversation_trace.jsonl` -> `conversation`."""
    stem = path.stem
    if stem.startswith("AzureLLMInferenceTrace_"):
        return stem[len("AzureLLMInferenceTrace_") :]
    for suffix in ("_trace", "-trace"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem or path.name


def load_traces(
    paths: str,
    fmt: str = "auto",
    block_size: int = 16,
    classes: Sequence[str | None] | None = None,
) -> Columns:
    """Load one or several comma-separated trace files into unsorted, per-source rebased columns.

    A source's class is `classes[k]` when given; else, with one file, the file's own per-row classes (BurstGPT
    log types, the `class` field of Mooncake-like lines) or the file-name label; with several files, the
    file-name label, so the mix can be told apart in per-class metrics.
    """
    fmt = fmt.lower()
    if fmt != "auto" and fmt not in FORMATS:
        raise WorkloadError(f"unknown trace format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    parts = [p for p in paths.split(",") if p.strip()]
    if not parts:
        raise WorkloadError("trace path is empty")
    if classes is not None and len(classes) != len(parts):
        raise WorkloadError(f"params.classes has {len(classes)} labels for {len(parts)} trace files")
    out: list[Columns] = []
    for k, raw in enumerate(parts):
        path = resolve_path(raw)
        f = detect_format(path) if fmt == "auto" else fmt
        root = ROOT if k == 0 else hash((ROOT, -1, k))
        cols = _LOADERS[f](path, block_size, root)
        explicit = classes[k] if classes is not None else None
        if explicit is not None:
            cols.relabel(explicit)
        elif len(parts) > 1 or cols.cls_names == [None]:
            cols.relabel(default_label(path))  # a mix labels by source; else keep per-row classes
        if len(cols):
            cols.arrival = cols.arrival - cols.arrival.min()
        if len(parts) > 1 and cols.session is not None:
            cols.session = [None if s is None else f"{k}:{s}" for s in cols.session]
        out.append(cols)
    return out[0] if len(out) == 1 else Columns.concat(out)
