"""Trace files on disk: the traces shipped in the package (`builtin:NAME`), compressed files, path checks.

The package ships the public traces compressed under `llmsched/data/traces` (licences and attribution in
ATTRIBUTION.md beside them). A file whose name ends in `.gz` or `.xz` is read through gzip or lzma; the
format is told by the name without that suffix (`x.jsonl.xz` is JSON lines).
"""

from __future__ import annotations

import gzip
import io
import lzma
import zlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

from llmsched.workload.errors import WorkloadError

BUILTIN_PREFIX = "builtin:"
COMPRESSED = {".gz": gzip.open, ".xz": lzma.open}


@dataclass(frozen=True, slots=True)
class BuiltinTrace:
    name: str
    file: str  # in llmsched/data/traces
    original: str  # the same trace's path in the public release's layout (looked up in --traces DIR first)
    source: str
    licence: str
    description: str
    label: str = ""  # the request class of its rows (as named from the original file name)


BUILTIN_TRACES: dict[str, BuiltinTrace] = {
    t.name: t
    for t in (
        BuiltinTrace("azure-conv", "azure-conv.csv.gz", "azure-2023/AzureLLMInferenceTrace_conv.csv",
                     "Azure/AzurePublicDataset, Azure LLM inference trace 2023", "CC-BY-4.0",
                     "conversation service, 19,366 requests over ~58 min; prompt mean ~1,155, output ~211 tokens",
                     "conv"),
        BuiltinTrace("azure-code", "azure-code.csv.gz", "azure-2023/AzureLLMInferenceTrace_code.csv",
                     "Azure/AzurePublicDataset, Azure LLM inference trace 2023", "CC-BY-4.0",
                     "code completion, 8,819 requests over ~57 min; prompt mean ~2,048, output ~28 tokens",
                     "code"),
        BuiltinTrace("mooncake-conv", "mooncake-conv.jsonl.xz", "mooncake/conversation_trace.jsonl",
                     "kvcache-ai/Mooncake (FAST'25), conversation trace", "Apache-2.0",
                     "12,031 requests over ~59 min with 512-token block ids (~37% prefix reuse); prompt mean "
                     "~12k, output ~343 tokens", "conversation"),
        BuiltinTrace("sample", "sample.jsonl", "",
                     "synthesized by llmsched (`prefix-heavy` generator, scripts/make_sample_trace.py)",
                     "Apache-2.0 (this project)",
                     "1,200 requests at ~4 req/s: chat sessions, API calls behind shared prompts, agents"),
    )
}


def data_dir() -> Path:
    return Path(str(resources.files("llmsched").joinpath("data/traces")))


def builtin_names() -> list[str]:
    return sorted(BUILTIN_TRACES)


def builtin_path(name: str) -> Path:
    """The packaged file of `builtin:NAME` (NAME without the prefix)."""
    t = BUILTIN_TRACES.get(name)
    if t is None:
        from difflib import get_close_matches

        close = get_close_matches(name, builtin_names(), n=1)
        hint = f" (did you mean builtin:{close[0]}?)" if close else ""
        raise WorkloadError(f"unknown built-in trace 'builtin:{name}'{hint}; known: "
                            + ", ".join(f"builtin:{n}" for n in builtin_names()))
    p = data_dir() / t.file
    if not p.is_file():  # pragma: no cover - a broken installation
        raise WorkloadError(f"built-in trace builtin:{name} is missing from the installation ({p})")
    return p


def resolve_path(path: str) -> Path:
    """A file path, or `builtin:NAME` for a trace shipped in the package."""
    path = path.strip()
    if path.startswith(BUILTIN_PREFIX):
        return builtin_path(path[len(BUILTIN_PREFIX):])
    p = Path(path).expanduser()
    if p.is_dir():
        raise WorkloadError(f"trace path {p} is a directory; give a trace file (or builtin:NAME, see "
                            "`llmsched traces`)")
    if not p.is_file():
        raise WorkloadError(f"trace file not found: {p} (built-in traces: "
                            + ", ".join(f"builtin:{n}" for n in builtin_names()) + ")")
    return p


def plain_suffix(path: Path) -> str:
    """The suffix that names the format: `.jsonl` for `x.jsonl.xz`."""
    suffixes = path.suffixes
    if suffixes and suffixes[-1].lower() in COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1].lower() if suffixes else ""


def plain_stem(path: Path) -> str:
    """The name without its compression and format suffixes: `azure-conv` for `azure-conv.csv.gz`."""
    name = path.name
    if path.suffix.lower() in COMPRESSED:
        name = name[: -len(path.suffix)]
    return Path(name).stem


def open_text(path: Path, newline: str | None = None) -> IO[str]:
    """A text stream of the file (`read_text`); `newline` as `open`'s (None: universal newlines)."""
    return io.StringIO(read_text(path), newline=newline)


def read_text(path: Path) -> str:
    """The file's text, decompressed if its name ends in .gz or .xz, decoded here in one piece so that a byte
    that is not UTF-8 names the file and line; a leading byte-order mark (Excel, PowerShell) is dropped."""
    data = _raw(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise WorkloadError.at(path, line, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


def first_line(path: Path) -> str:
    """The file's first line (decompressed, BOM dropped; undecodable bytes replaced): enough to tell a format
    without reading the whole file."""
    return _raw(path, first_line=True).decode("utf-8-sig", errors="replace")


def _raw(path: Path, first_line: bool = False) -> bytes:
    """The file's bytes (or its first line), decompressed; an unreadable or corrupt file names itself."""
    opener = COMPRESSED.get(path.suffix.lower())
    try:
        with path.open("rb") if opener is None else opener(path) as f:
            return f.readline() if first_line else f.read()
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
        raise WorkloadError(f"{path}: cannot {'read' if opener is None else 'decompress'}: {e}") from None
