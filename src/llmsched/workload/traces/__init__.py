"""Trace files: format detection, the `builtin:` traces shipped in the package, and mixing several files into one workload.

A trace path may list several files separated by commas; each file is one source with its own class label
(from `params["classes"]`, else derived from the file name, see `default_label`). Each source is shifted so
that its first request arrives at 0 and the sources are merged by arrival time, so a mix replays the sources
side by side (e.g. the Azure 2023 conversation and code traces as classes `conv` and `code`). Sources with
block ids get disjoint hash namespaces: ids of different files never alias.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from llmsched.core.hashing import ROOT
from llmsched.workload.columns import Columns
from llmsched.workload.errors import WorkloadError
from llmsched.workload.traces.azure import is_azure_header, load_azure
from llmsched.workload.traces.burstgpt import is_burstgpt_header, load_burstgpt
from llmsched.workload.traces.files import (
    BUILTIN_PREFIX,
    BUILTIN_TRACES,
    builtin_names,
    first_line,
    plain_stem,
    plain_suffix,
    resolve_path,
)
from llmsched.workload.traces.mooncake import load_mooncake
from llmsched.workload.traces.record import is_record_header, load_record

FORMATS = ("azure", "mooncake", "burstgpt", "record")

Loader = Callable[[Path, int, int, str | None], Columns]  # (path, block size, hash namespace, served model)
_LOADERS: dict[str, Loader] = {
    "azure": lambda p, bs, root, model: load_azure(p),
    "mooncake": lambda p, bs, root, model: load_mooncake(p, bs, root),
    "burstgpt": lambda p, bs, root, model: load_burstgpt(p),
    "record": load_record,
}


_CACHE: OrderedDict[tuple[Any, ...], Columns] = OrderedDict()
_CACHE_SIZE = 4


def _load_file(path: Path, fmt: str, block_size: int, root: int, model: str | None = None) -> Columns:
    """A parsed trace file, cached per process by (file identity, format, block size, namespace): a scenario
    replays one trace under many policy sets, and a worker process would otherwise parse it for each (the
    Mooncake trace takes over a second). Callers get a copy whose fields they may reassign."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size, fmt, block_size, root, model)
    cols = _CACHE.get(key)
    if cols is None:
        if model is not None and fmt != "record":
            raise WorkloadError(f"{path}: a served model selects the rows of a `serve --record` recording; this "
                                f"is a {fmt} trace")
        cols = _LOADERS[fmt](path, block_size, root, model)
        _CACHE[key] = cols
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return replace(cols, cls_names=list(cols.cls_names), notes=dict(cols.notes),
                   session=None if cols.session is None else list(cols.session),
                   hashes=None if cols.hashes is None else list(cols.hashes),
                   out_hashes=None if cols.out_hashes is None else list(cols.out_hashes))


def detect_format(path: Path) -> str:
    """A gateway recording by its header line; else by extension (`.jsonl` -> mooncake, also under .gz/.xz),
    else by the CSV header."""
    first = first_line(path).strip()
    if is_record_header(first):
        return "record"
    if plain_suffix(path) in (".jsonl", ".json"):
        return "mooncake"
    if is_azure_header(first):
        return "azure"
    if is_burstgpt_header(first):
        return "burstgpt"
    if first.startswith("{"):
        return "mooncake"
    if not first:
        raise WorkloadError.at(path, 1, "the trace file is empty")
    raise WorkloadError.at(path, 1, f"cannot tell the trace format from header {first[:120]!r}; expected an "
                           "Azure 2023 (TIMESTAMP,ContextTokens,GeneratedTokens) or BurstGPT header, or JSON "
                           "lines (set the format: --trace-format / name)")


def default_label(path: Path) -> str:
    """`AzureLLMInferenceTrace_conv.csv` -> `conv`, `conversation_trace.jsonl` -> `conversation`."""
    packaged = next((t for t in BUILTIN_TRACES.values() if t.label and t.file == path.name), None)
    if packaged is not None:
        return packaged.label
    stem = plain_stem(path)
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
    model: str | None = None,
) -> Columns:
    """Load one or several comma-separated trace files into unsorted, per-source rebased columns.

    A source's class is `classes[k]` when given; else, with one file, the file's own per-row classes (BurstGPT
    log types, the `class` field of Mooncake-like lines) or the file-name label; with several files, the
    file-name label, so the mix can be told apart in per-class metrics. `model`: the served model whose rows
    of a gateway recording to replay (docs/calibration.md).
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
        cols = _load_file(path, f, block_size, root, model)
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


__all__ = ["BUILTIN_PREFIX", "BUILTIN_TRACES", "FORMATS", "builtin_names", "default_label", "detect_format",
           "load_traces", "resolve_path"]
