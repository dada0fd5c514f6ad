"""Gateway recordings (`llmsched serve --record PATH`): JSON lines with a header line (docs/calibration.md).

Detected by the header's `"llmsched_record"` key. A recording rotated by size is PATH.1, PATH.2, ... (older
first) plus PATH; loading PATH loads every segment of the same recording (same `recording` id) in order.
Times are multiplied by the header's `time_scale` (the speed of emulated engines; 1 for real ones).
As a trace (priorities included), only requests answered with HTTP 200 are kept (`notes["dropped_failed"]` counts the others); a
request whose output length the gateway could not see gets its `max_tokens`. Block hashes were recorded at
the header's `block_size`; an engine block size that is a multiple of it keeps every k-th hash (a chained
hash names the whole prefix through its block); any other block size is an error.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmsched.core.hashing import ROOT
from llmsched.workload.columns import Columns
from llmsched.workload.errors import WorkloadError
from llmsched.workload.traces.files import first_line, read_text
from llmsched.workload.traces.jsonl import json_lines

MAGIC = "llmsched_record"


def is_record_header(line: str) -> bool:
    if not line.startswith("{") or MAGIC not in line:
        return False
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and MAGIC in obj


@dataclass
class Recording:
    """Every row of a recording, in file order, times already multiplied by `time_scale`."""

    header: dict[str, Any]
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray  # -1 where unknown
    max_tokens: np.ndarray
    backend: np.ndarray  # -1 where never dispatched
    ttft: np.ndarray  # NaN where unknown (not streamed, failed)
    e2e: np.ndarray  # NaN where failed
    status: np.ndarray
    hashes: list[str | None]
    session: list[str | None]
    cls: list[str | None]
    priority: np.ndarray
    model: list[str | None]  # the model pool's id each row went to (None: unknown, or an older recording)
    truncated: int = 0  # segments whose last line was cut short (a gateway killed mid-write): that line dropped

    @property
    def block_size(self) -> int:
        return int(self.header.get("block_size", 16))

    @property
    def ok(self) -> np.ndarray:
        return (self.status == 200) & np.isfinite(self.e2e)

    def __len__(self) -> int:
        return len(self.arrival)


def numbered_segments(path: Path) -> list[tuple[int, Path]]:
    """PATH's rotated segments PATH.n that exist, as (n, path) in the order of their numbers: what the writer
    numbers past (`gateway.record`) and the reader loads (a gap, e.g. a pruned oldest one, skips nothing)."""
    out = []
    for p in path.parent.glob(f"{path.name}.*"):
        n = p.name[len(path.name) + 1:]
        if n.isdigit() and p.is_file():
            out.append((int(n), p))
    return sorted(out)


def segments(path: Path) -> list[Path]:
    """PATH's older segments PATH.1, PATH.2, ... that exist, in the order of their numbers, then PATH."""
    return [p for _, p in numbered_segments(path)] + [path]


_LIMIT = 2**62  # integers beyond this are not counts, statuses or indices: a corrupt row


def _num(path: Path, i: int, row: dict[str, Any], key: str, kind: type, none_ok: bool) -> Any:
    v = row.get(key)
    if v is None and none_ok:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)):
        raise WorkloadError.at(path, i, f"{key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if not (math.isfinite(v) and -_LIMIT < v < _LIMIT):
        raise WorkloadError.at(path, i, f"{key} must be a finite number of sensible size, got {v!r}")
    return v


def _header(path: Path, first: str | None = None) -> dict[str, Any]:
    """The header line of `path` (`first`: that line, when the caller read it already), checked."""
    try:
        head = json.loads(first_line(path) if first is None else first)
    except json.JSONDecodeError:
        head = None
    if not isinstance(head, dict) or MAGIC not in head:
        raise WorkloadError.at(path, 1, f"not a gateway recording (no {MAGIC!r} header line)")
    bs = head.get("block_size", 16)
    if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
        raise WorkloadError.at(path, 1, f"block_size must be an integer >= 1, got {bs!r}")
    scale = head.get("time_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not (math.isfinite(scale) and scale > 0):
        raise WorkloadError.at(path, 1, f"time_scale must be a number > 0, got {scale!r}")
    return head


def _complete_lines(seg: Path) -> tuple[str, bool]:
    """The segment's text without a last line cut short (no newline after it, and not valid JSON: what a gateway
    killed mid-write leaves), and whether one was dropped. Cut anywhere else, a line is an error."""
    text = read_text(seg)
    if text.endswith("\n") or "\n" not in text:
        return text, False
    keep, last = text.rsplit("\n", 1)
    try:
        json.loads(last)
    except json.JSONDecodeError:
        return keep + "\n", True
    return text, False


def _check_hashes(seg: Path, i: int, h: object) -> str | None:
    if h is None or h == "":
        return None
    if not isinstance(h, str):
        raise WorkloadError.at(seg, i, "block_hashes must be a base64 string")
    try:
        raw = base64.b64decode(h, validate=True)
    except (binascii.Error, ValueError):
        raise WorkloadError.at(seg, i, "block_hashes is not valid base64") from None
    if len(raw) % 8:
        raise WorkloadError.at(seg, i, f"block_hashes is {len(raw)} bytes, not a multiple of 8 (uint64 hashes)")
    return h


def read_recording(path: Path) -> Recording:
    """All rows of the recording PATH (with its rotated segments)."""
    header: dict[str, Any] | None = None
    rid = _header(path).get("recording")  # PATH names the recording; older ones rotated beside it are skipped
    cols: dict[str, list[Any]] = {k: [] for k in ("arrival", "prompt", "output", "max_tokens", "backend", "ttft",
                                                   "e2e", "status", "hashes", "session", "cls", "priority",
                                                   "model")}
    truncated = 0
    for seg in segments(path):
        text, cut = _complete_lines(seg)
        with io.StringIO(text, newline=None) as f:
            head = _header(seg, f.readline())
            if head.get(MAGIC) != 1:
                raise WorkloadError.at(seg, 1, f"unsupported recording format version {head.get(MAGIC)!r}")
            if head.get("recording") != rid:
                continue  # a segment of an older recording rotated beside this one
            if header is None:
                header = head
            truncated += cut
            scale = float(head.get("time_scale", 1.0))
            for i, row in json_lines(f, seg, start=2):
                if not isinstance(row, dict):
                    raise WorkloadError.at(seg, i, "expected a JSON object")
                t = _num(seg, i, row, "arrival", float, False)
                p = _num(seg, i, row, "prompt_tokens", int, False)
                if t < 0 or p < 1:
                    raise WorkloadError.at(seg, i, f"arrival must be >= 0 and prompt_tokens >= 1, got {t}, {p}")
                o = _num(seg, i, row, "output_tokens", int, True)
                mt = _num(seg, i, row, "max_tokens", int, True)
                ttft = _num(seg, i, row, "ttft", float, True)
                e2e = _num(seg, i, row, "e2e", float, True)
                b = _num(seg, i, row, "backend", int, True)
                cols["arrival"].append(t * scale)
                cols["prompt"].append(p)
                cols["output"].append(-1 if o is None else o)
                cols["max_tokens"].append(mt or (o or 1))
                cols["backend"].append(-1 if b is None else b)
                cols["ttft"].append(np.nan if ttft is None else ttft * scale)
                cols["e2e"].append(np.nan if e2e is None else e2e * scale)
                cols["status"].append(int(_num(seg, i, row, "status", int, False)))
                cols["hashes"].append(_check_hashes(seg, i, row.get("block_hashes")))
                cols["session"].append(row.get("session"))
                cols["cls"].append(row.get("class"))
                pr = row.get("priority", 0)
                cols["priority"].append(pr if isinstance(pr, int) else 0)
                m = row.get("model")
                if m is not None and not isinstance(m, str):
                    raise WorkloadError.at(seg, i, f"model must be a string, got {m!r}")
                cols["model"].append(m)
    assert header is not None
    f64, i64 = np.float64, np.int64
    return Recording(
        header, np.array(cols["arrival"], f64), np.array(cols["prompt"], i64), np.array(cols["output"], i64),
        np.array(cols["max_tokens"], i64), np.array(cols["backend"], i64), np.array(cols["ttft"], f64),
        np.array(cols["e2e"], f64), np.array(cols["status"], i64), cols["hashes"], cols["session"], cols["cls"],
        np.array(cols["priority"], i64), cols["model"], truncated,
    )


def rows_of_model(rec: Recording, model: str | None, choose: str = "--served-model NAME") -> Recording:
    """The rows of `rec` that went to `model`'s pool, on the backends that served them (renumbered, the header's
    `backends` cut to them). `model` None: the whole recording, unless it holds several models (then a ValueError
    naming them and how to `choose` one: a fit or replay must not mix models)."""
    present = sorted({m for m in rec.model if m is not None})
    if model is None:
        if len(present) > 1:
            raise ValueError(f"the recording holds several models ({', '.join(present)}); choose one with {choose}")
        return rec
    if model not in present:
        raise ValueError(f"the recording has no row of model {model!r}; it holds: {', '.join(present) or 'none named'}")
    keep = np.array([m == model for m in rec.model], dtype=bool)
    idx = np.flatnonzero(keep).tolist()
    # The model's backends only, renumbered 0..k-1: a replay's cluster is the backends that served the model,
    # so a candidate router gets the capacity the recorded routing had, not the whole fleet's.
    b = rec.backend[keep]
    used = np.unique(b[b >= 0])
    backend = np.where(b >= 0, np.searchsorted(used, b), b)
    names = rec.header.get("backends") or []
    header = {**rec.header, "backends": [names[i] if i < len(names) else f"backend {i}" for i in used.tolist()]}
    return Recording(header, rec.arrival[keep], rec.prompt[keep], rec.output[keep], rec.max_tokens[keep],
                     backend, rec.ttft[keep], rec.e2e[keep], rec.status[keep],
                     [rec.hashes[i] for i in idx], [rec.session[i] for i in idx], [rec.cls[i] for i in idx],
                     rec.priority[keep], [model] * len(idx), rec.truncated)


def encode_hashes(h: np.ndarray) -> str:
    """uint64 hashes -> base64 of their little-endian bytes (the `block_hashes` field)."""
    return base64.b64encode(h.astype("<u8").tobytes()).decode("ascii")


def decode_hashes(s: str) -> tuple[int, ...]:
    raw = base64.b64decode(s, validate=True)
    if len(raw) % 8:
        raise ValueError(f"block_hashes is {len(raw)} bytes, not a multiple of 8")
    return tuple(np.frombuffer(raw, dtype="<u8").tolist())


def record_hashes(encoded: str | None, recorded_bs: int, block_size: int, root: int = ROOT) -> tuple[int, ...] | None:
    """A row's hashes at the engine's block size (every k-th recorded one), in namespace `root`."""
    if not encoded:
        return None
    h = decode_hashes(encoded)
    k = block_size // recorded_bs
    if k > 1:
        h = h[k - 1 :: k]
    if root != ROOT:
        h = tuple(hash((root, x)) for x in h)
    return h or None


def load_record(path: Path, block_size: int, root: int = ROOT, model: str | None = None) -> Columns:
    """`model`: replay that served model's rows (a recording of a multi-model gateway must name one: its models
    ran on different backends, so replaying them on one simulated cluster would mix them)."""
    rec = read_recording(path)
    try:
        rec = rows_of_model(rec, model, '--served-model NAME (a scenario: trace params {"model": NAME})')
    except ValueError as e:
        raise WorkloadError(f"{path}: {e}") from None
    bs = rec.block_size
    if block_size % bs:
        raise WorkloadError(f"{path}: recorded at block size {bs}; the engine's block size ({block_size}) must be "
                            "a multiple of it")
    ok = np.flatnonzero(rec.ok)
    out = np.where(rec.output > 0, rec.output, rec.max_tokens)
    classes: dict[str | None, int] = {}
    codes = np.array([classes.setdefault(rec.cls[i], len(classes)) for i in ok.tolist()], dtype=np.int32)
    sessions = [rec.session[i] for i in ok.tolist()]
    hashes = [record_hashes(rec.hashes[i], bs, block_size, root) for i in ok.tolist()]
    cols = Columns(rec.arrival[ok], rec.prompt[ok], np.maximum(out[ok], 1), codes, list(classes) or [None],
                   sessions if any(s is not None for s in sessions) else None,
                   hashes if any(h is not None for h in hashes) else None)
    if rec.priority[ok].any():
        cols.priority = rec.priority[ok]
    cols.notes["dropped_failed"] = int(len(rec) - len(ok))
    if rec.truncated:
        cols.notes["truncated_lines"] = rec.truncated
    return cols
