"""Azure LLM inference trace 2023 (Azure/AzurePublicDataset): `TIMESTAMP,ContextTokens,GeneratedTokens`.

TIMESTAMP is wall-clock with 7 fractional digits (`2023-11-16 18:15:46.6805900`); files have no trailing
newline. The fast path parses every column with numpy in one go; only when that fails does a line-by-line
pass run, to name the first bad line (a 19k-row file loads in a few tens of milliseconds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmsched.workload.columns import Columns
from llmsched.workload.errors import MAX_TOKENS, WorkloadError
from llmsched.workload.traces.files import read_text

HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def is_azure_header(line: str) -> bool:
    return tuple(c.strip() for c in line.split(",")) == HEADER


def load_azure(path: Path) -> Columns:
    text = read_text(path)
    lines = text.splitlines()
    if not lines or not is_azure_header(lines[0]):
        got = lines[0] if lines else "<empty file>"
        raise WorkloadError.at(path, 1, f"expected header {','.join(HEADER)!r}, got {got!r}")
    body = lines[1:]
    while body and not body[-1].strip():  # tolerate a trailing newline or blank tail
        body.pop()
    try:
        ts, ctx, gen = _parse_fast(body)
    except (ValueError, TypeError, OverflowError):
        ts, ctx, gen = _parse_slow(path, body)  # raises with the line number
    if len(ctx) and (ctx.min() < 1 or gen.min() < 1 or ctx.max() > MAX_TOKENS or gen.max() > MAX_TOKENS):
        _parse_slow(path, body)
    t0 = ts[0] if len(ts) else np.datetime64(0, "ns")
    arrival = (ts - t0).astype(np.float64) / 1e9
    return Columns.single_class(arrival, ctx, gen, None)


def _parse_fast(body: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if any(line.count(",") != 2 for line in body):
        raise ValueError("field count")
    flat = ",".join(body).split(",") if body else []  # one split for the whole file
    ts = np.array(flat[0::3], dtype="datetime64[ns]")
    ctx = np.array(flat[1::3], dtype=np.int64)
    gen = np.array(flat[2::3], dtype=np.int64)
    if np.isnat(ts).any():
        raise ValueError("NaT")
    return ts, ctx, gen


def _parse_slow(path: Path, body: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ts: list[np.datetime64] = []
    ctx: list[int] = []
    gen: list[int] = []
    for i, line in enumerate(body, start=2):
        parts = line.split(",")
        if len(parts) != 3:
            raise WorkloadError.at(path, i, f"expected 3 comma-separated fields, got {len(parts)}: {line!r}")
        try:
            t = np.datetime64(parts[0].strip(), "ns")
        except ValueError:
            raise WorkloadError.at(path, i, f"bad TIMESTAMP {parts[0]!r}") from None
        if np.isnat(t):
            raise WorkloadError.at(path, i, f"bad TIMESTAMP {parts[0]!r}")
        for name, raw, out in (("ContextTokens", parts[1], ctx), ("GeneratedTokens", parts[2], gen)):
            try:
                v = int(raw)
            except ValueError:
                raise WorkloadError.at(path, i, f"{name} is not an integer: {raw!r}") from None
            if v < 1:
                raise WorkloadError.at(path, i, f"{name} must be >= 1, got {v}")
            if v > MAX_TOKENS:
                raise WorkloadError.at(path, i, f"{name} is too large: {v} (at most {MAX_TOKENS})")
            out.append(v)
        ts.append(t)
    return (
        np.array(ts, dtype="datetime64[ns]"),
        np.array(ctx, dtype=np.int64),
        np.array(gen, dtype=np.int64),
    )
