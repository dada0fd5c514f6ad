"""Mooncake traces (kvcache-ai/Mooncake, FAST'25): JSON lines `{timestamp, input_length, output_length, hash_ids}`.

`timestamp` is in milliseconds; `hash_ids` name the prompt's 512-token blocks cumulatively (equal id = equal
prefix up to and including that block) and the last block may be partial. They are expanded to chained
hashes at the engine's block size by `prefix.BlockIdExpander`, lazily: only for rows that survive shaping. A request whose first block id no other
request of the file uses shares nothing, and gets `block_hashes=None` (saves memory on large traces).
Optional string fields `class` and `session` (written by the built-in sample, absent from Mooncake's own
files) become the request's class and session.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from llmsched.core.hashing import ROOT
from llmsched.workload.columns import Columns
from llmsched.workload.errors import MAX_TOKENS, WorkloadError
from llmsched.workload.prefix import BlockIdExpander, BlockRef
from llmsched.workload.traces.files import open_text
from llmsched.workload.traces.jsonl import json_lines

SRC_BLOCK = 512
FIELDS = ("timestamp", "input_length", "output_length")


def load_mooncake(path: Path, block_size: int, root: int = ROOT) -> Columns:
    ts: list[float] = []
    inp: list[int] = []
    out: list[int] = []
    ids_per_row: list[list[int]] = []
    sessions: list[str | None] = []
    codes: list[int] = []
    classes: dict[str | None, int] = {}
    with open_text(path) as f:
        for i, row in json_lines(f, path):
            t, n_in, n_out, ids = _check_row(path, i, row)
            ts.append(t)
            inp.append(n_in)
            out.append(n_out)
            ids_per_row.append(ids)
            cls, session = row.get("class"), row.get("session")
            for k, v in (("class", cls), ("session", session)):
                if v is not None and not isinstance(v, str):
                    raise WorkloadError.at(path, i, f"{k} must be a string, got {v!r}")
            sessions.append(session)
            codes.append(classes.setdefault(cls, len(classes)))
    first_uses = Counter(ids[0] for ids in ids_per_row if ids)
    expander = BlockIdExpander(block_size, SRC_BLOCK, root)
    hashes: list[BlockRef | None] = [
        BlockRef(expander, ids, n_in) if ids and first_uses[ids[0]] > 1 else None
        for ids, n_in in zip(ids_per_row, inp, strict=True)
    ]
    return Columns(
        np.array(ts, dtype=np.float64) / 1000.0,
        np.array(inp, dtype=np.int64),
        np.array(out, dtype=np.int64),
        np.array(codes, dtype=np.int32),
        list(classes) or [None],
        sessions if any(s is not None for s in sessions) else None,
        hashes if any(h is not None for h in hashes) else None,
    )


def _check_row(path: Path, i: int, row: object) -> tuple[float, int, int, list[int]]:
    if not isinstance(row, dict):
        raise WorkloadError.at(path, i, f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in FIELDS if k not in row]
    if missing:
        raise WorkloadError.at(path, i, f"missing field(s) {', '.join(missing)}")
    t = row["timestamp"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not np.isfinite(t) or t < 0:
        raise WorkloadError.at(path, i, f"timestamp must be a number of ms >= 0, got {t!r}")
    lengths = []
    for k in ("input_length", "output_length"):
        v = row[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise WorkloadError.at(path, i, f"{k} must be an integer >= 1, got {v!r}")
        if v > MAX_TOKENS:
            raise WorkloadError.at(path, i, f"{k} is too large: {v} (at most {MAX_TOKENS})")
        lengths.append(v)
    ids = row.get("hash_ids", [])
    if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
        raise WorkloadError.at(path, i, "hash_ids must be a list of integers")
    need = -(-lengths[0] // SRC_BLOCK)
    if len(ids) > need:
        raise WorkloadError.at(
            path,
            i,
            f"{len(ids)} hash_ids for input_length {lengths[0]} (at most {need} blocks of {SRC_BLOCK})",
        )
    return float(t), lengths[0], lengths[1], ids
