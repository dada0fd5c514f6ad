"""BurstGPT traces (HPMLL/BurstGPT): `Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,
Total tokens,Log Type`.

Columns are found by header name, so the release without `Session ID` / `Elapsed time` loads too. The log
type becomes the class (`Conversation log` -> `conversation`, `API log` -> `api`) and the session id the
session. Rows with 0 response tokens are failed requests in BurstGPT and are dropped, as are rows with 0
request tokens (nothing to prefill); `Columns.notes["dropped_failed"]` counts them.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from llmsched.workload.columns import Columns
from llmsched.workload.errors import MAX_TOKENS, WorkloadError
from llmsched.workload.traces.files import open_text

REQUIRED = ("Timestamp", "Request tokens", "Response tokens")


def is_burstgpt_header(line: str) -> bool:
    names = {c.strip() for c in line.split(",")}
    return all(r in names for r in REQUIRED)


def class_of(log_type: str) -> str | None:
    """`Conversation log` -> `conversation`; empty -> None."""
    s = log_type.strip().lower()
    if s.endswith(" log"):
        s = s[: -len(" log")]
    return s.replace(" ", "-") or None


def load_burstgpt(path: Path) -> Columns:
    with open_text(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise WorkloadError.at(path, 1, "empty file, expected a BurstGPT header")
        names = [h.strip() for h in header]
        missing = [r for r in REQUIRED if r not in names]
        if missing:
            raise WorkloadError.at(path, 1, f"header lacks column(s) {', '.join(missing)}: {','.join(names)}")
        col = {n: j for j, n in enumerate(names)}
        it, jr, jo = col["Timestamp"], col["Request tokens"], col["Response tokens"]
        js, jl = col.get("Session ID"), col.get("Log Type")
        ts: list[float] = []
        inp: list[int] = []
        out: list[int] = []
        sessions: list[str | None] = []
        codes: list[int] = []
        classes: dict[str | None, int] = {}
        dropped = 0
        for row in reader:
            i = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(names):
                raise WorkloadError.at(path, i, f"expected {len(names)} fields, got {len(row)}")
            try:
                t = float(row[it])
            except ValueError:
                raise WorkloadError.at(path, i, f"Timestamp is not a number: {row[it]!r}") from None
            if not np.isfinite(t) or t < 0:
                raise WorkloadError.at(path, i, f"Timestamp must be >= 0, got {row[it]!r}")
            n_in = _count(path, i, "Request tokens", row[jr])
            n_out = _count(path, i, "Response tokens", row[jo])
            if n_in == 0 or n_out == 0:
                dropped += 1
                continue
            ts.append(t)
            inp.append(n_in)
            out.append(n_out)
            sessions.append((row[js].strip() or None) if js is not None else None)
            c = class_of(row[jl]) if jl is not None else None
            codes.append(classes.setdefault(c, len(classes)))
    has_session = any(s is not None for s in sessions)
    return Columns(
        np.array(ts, dtype=np.float64),
        np.array(inp, dtype=np.int64),
        np.array(out, dtype=np.int64),
        np.array(codes, dtype=np.int32),
        list(classes) or [None],
        sessions if has_session else None,
        None,
        {"dropped_failed": dropped},
    )


def _count(path: Path, i: int, name: str, raw: str) -> int:
    try:
        v = int(raw)
    except ValueError:
        try:
            f = float(raw)
        except ValueError:
            raise WorkloadError.at(path, i, f"{name} is not an integer: {raw!r}") from None
        if not f.is_integer():
            raise WorkloadError.at(path, i, f"{name} is not an integer: {raw!r}") from None
        v = int(f)
    if v < 0:
        raise WorkloadError.at(path, i, f"{name} must be >= 0, got {v}")
    if v > MAX_TOKENS:
        raise WorkloadError.at(path, i, f"{name} is too large: {raw.strip()} (at most {MAX_TOKENS})")
    return v
