"""`llmsched serve --record PATH`: one JSON line per finished request, for replay and calibration.

The data path pays one `deque.append` of a tuple per request (`Recorder.record`); a writer thread wakes every
`flush_interval` seconds, turns the tuples into JSON lines and appends them to PATH. The buffer is bounded: when
it holds `buffer` records the new one is dropped and counted (`llmsched_gateway_record_dropped_total`), never
silently and never blocking a request. When PATH reaches `max_bytes` it is renamed PATH.1 (then PATH.2, ...:
numbered in order of creation) and a new PATH starts with its own header line.

Format (docs/calibration.md): the first line of every file is a header object with `"llmsched_record": 1`;
then one object per request. No prompt text is written: the prompt's chained block hashes (as the gateway's
router computes them at `block_size`, `gateway.prefix`) are passed through a keyed 64-bit mix with a random
per-recording salt that is never written, and stored as base64 of little-endian uint64. Equal prefixes within a recording keep
equal hashes; nothing links them to the text or to another recording. Session/user keys are keyed BLAKE2b.

When the router does not hash prompts itself (round robin, least requests...), the data path hands the prompt
text over instead and the writer hashes the whole batch in one numpy pass (`prefix.text_block_hashes`): the
same values the router would have computed, at a fraction of the per-request cost. The text stays in memory
only until the writer's next pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import secrets
import threading
from binascii import b2a_base64
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from llmsched.core.types import Request
from llmsched.gateway.prefix import BlockHashes, Scratch, text_block_hashes
from llmsched.workload.traces.record import numbered_segments


class Finished(Protocol):
    """What the recorder reads of a finished request's outcome (the gateway's `server.Outcome`)."""

    status: int
    backend: int
    ttft: float | None
    e2e: float | None
    tokens: int | None
    model: str | None  # the model pool's id (gateway.pools; "*": the unnamed pool), None before one was chosen


FORMAT_VERSION = 1
_SLICE = 128  # rows the writer formats (and hashes) per numpy pass
HASH_SCHEME = "mix64-salted-v1"


def salt_hashes(hashes: np.ndarray | tuple[int, ...] | None, k0: int, k1: int) -> np.ndarray:
    """A keyed bijective 64-bit mix (splitmix64 finaliser around salt words) of each chained hash."""
    h = np.asarray(hashes if hashes is not None else (), dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = h ^ np.uint64(k0)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
        x = (x + np.uint64(k1)) * np.uint64(0x9E3779B97F4A7C15)
        x = x ^ (x >> np.uint64(29))
    return x


class Recorder:
    """Non-blocking JSON-lines recorder of finished requests (see the module docstring).

    Args:
        path: the file; rotated segments are PATH.1, PATH.2, ...
        block_size: the block size of the hashes (the gateway's `block_size`).
        class_header: request header whose value is recorded as the request's class.
        max_bytes: rotate when the current file reaches this size.
        buffer: records held for the writer before new ones are dropped (and counted).
        flush_interval: seconds between writer passes.
        time_scale: emulated seconds per recorded second (the `--emulated` engines' speed; 1 for real engines).
        backends: the backend URLs, written into each header (rows name a backend by its stable index).
        t0: the gateway clock's reading that is arrival 0.
    """

    def __init__(self, path: str | Path, block_size: int, class_header: str = "x-llmsched-class",
                 max_bytes: int = 256 * 1024 * 1024, buffer: int = 65536, flush_interval: float = 0.2,
                 time_scale: float = 1.0, backends: list[str] | None = None, t0: float = 0.0) -> None:
        self.path = Path(path)
        self.block_size = block_size
        self.class_header = class_header
        self.max_bytes = max_bytes
        self.capacity = buffer
        self.flush_interval = flush_interval
        self.time_scale = time_scale
        self.backends = list(backends or [])
        self.t0 = t0
        self.recording = secrets.token_hex(8)
        self._k0, self._k1 = secrets.randbits(64), secrets.randbits(64)
        self._key = secrets.token_bytes(16)
        self.written = 0
        self.dropped = 0
        self.rotations = 0
        self._q: deque[tuple[Any, ...]] = deque()
        self._scratch = Scratch()  # the writer thread's hashing buffer
        self._stop = threading.Event()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()
        self._thread = threading.Thread(target=self._run, name="llmsched-recorder", daemon=True)
        self._thread.start()

    # -- data path -------------------------------------------------------------------------------------
    def record(self, req: Request, out: Finished, cls: str | None, text: str | None = None) -> None:
        """Queue one finished request; never blocks (a full buffer drops and counts the record).

        `out` is the gateway's outcome of it (`server.Outcome`): status, backend index, TTFT and E2E in seconds
        from arrival (None: not seen), generated tokens as the data path counted them (None: unknown).
        `text`: the prompt, when `req` carries no block hashes; the writer hashes it. The recorded priority is
        `req.priority`: the body's checked integer, 0 without one, as the format has it (docs/calibration.md)."""
        if len(self._q) >= self.capacity:
            self.dropped += 1
            return
        ttft, e2e, tokens = out.ttft, out.e2e, out.tokens
        hashes = req.block_hashes if text is None or req.block_hashes else text
        self._q.append((req.arrival, req.prompt_len, -1 if tokens is None else tokens, req.output_len, hashes,
                        req.session, cls, req.priority, out.backend, -1.0 if ttft is None else ttft,
                        -1.0 if e2e is None else e2e, out.status, out.model))

    # -- writer ----------------------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"llmsched_record": FORMAT_VERSION, "recording": self.recording, "segment": self.rotations,
                "started": datetime.now(UTC).isoformat(timespec="seconds"), "block_size": self.block_size,
                "hash": HASH_SCHEME, "class_header": self.class_header, "time_scale": self.time_scale,
                "backends": self.backends}

    def _open(self) -> Any:
        f = self.path.open("a", encoding="utf-8")
        if f.tell() > 0:  # an existing file from another recording: start a new one beside it
            f.close()
            self._rotate_name()
            f = self.path.open("a", encoding="utf-8")
        f.write(json.dumps(self._header()) + "\n")
        f.flush()  # on disk at once: a new segment is a readable recording before its first row arrives
        return f

    def _rotate_name(self) -> None:
        """PATH becomes PATH.n, n past the highest existing number (not the lowest free one: with an older
        segment pruned, that would put the newest rows before the older ones)."""
        last = numbered_segments(self.path)
        os.replace(self.path, f"{self.path}.{last[-1][0] + 1 if last else 1}")

    def _lines(self, rows: list[tuple[Any, ...]]) -> list[str]:
        # All rows' hashes made (for rows that brought their prompt text) and salted in one numpy pass each:
        # per-row numpy calls would cost more than the rest. A gateway's rows are all text (its router does not
        # hash) or all hashes (it does); rows without a full block have neither.
        hs: list[Any] = [r[4] or () for r in rows]
        lens = [0 if isinstance(h, str) else len(h) for h in hs]
        texts = [k for k, h in enumerate(hs) if isinstance(h, str)]
        hashed = [k for k, n in enumerate(lens) if n]
        if hashed and all(isinstance(hs[k], BlockHashes) for k in hashed):  # the gateway's: arrays already
            flat = np.concatenate([hs[k].array for k in hashed])
        else:
            flat = np.fromiter(itertools.chain.from_iterable(hs[k] for k in hashed), dtype=np.uint64,
                               count=sum(lens))
        if texts:
            made, ns = text_block_hashes([hs[k] for k in texts], self.block_size, self._scratch)
            for k, n in zip(texts, ns.tolist(), strict=True):
                lens[k] = n
            if not hashed:
                flat = made
            else:  # both kinds (not from one gateway): lay them out in row order
                ends = itertools.accumulate(ns.tolist())
                at = dict(zip(texts, itertools.pairwise(itertools.chain((0,), ends)), strict=True))
                ends_h = itertools.accumulate(lens[k] for k in hashed)
                at_h = dict(zip(hashed, itertools.pairwise(itertools.chain((0,), ends_h)), strict=True))
                flat = np.concatenate([made[slice(*at[k])] if k in at else flat[slice(*at_h[k])]
                                       for k in range(len(rows)) if lens[k]] or [flat])
        raw = salt_hashes(flat, self._k0, self._k1).astype("<u8").tobytes()
        out, off = [], 0
        key, t0 = self._key, self.t0
        fmt = ('{"arrival":%.6f,"prompt_tokens":%d,"output_tokens":%s,"max_tokens":%d,"block_hashes":"%s",'
               '"session":%s,"class":%s,"priority":%d,"backend":%d,"ttft":%s,"e2e":%s,"status":%d,"model":%s}')
        for r, n in zip(rows, lens, strict=True):
            arrival, prompt, n_out, max_tokens, _, session, cls, prio, backend, ttft, e2e, status, model = r
            end = off + 8 * n
            blocks = b2a_base64(raw[off:end], newline=False).decode("ascii")
            off = end
            ok = status == 200 and e2e >= 0
            sess = ('"' + hashlib.blake2b(session.encode(), key=key, digest_size=8).hexdigest() + '"'
                    if session else "null")
            out.append(fmt % (
                arrival - t0, prompt, n_out if ok and n_out >= 0 else "null", max_tokens, blocks, sess,
                "null" if cls is None else json.dumps(cls), prio, backend,
                f"{ttft:.6f}" if ok and ttft >= 0 else "null",
                f"{e2e:.6f}" if ok else "null", status, "null" if model in (None, "*") else json.dumps(model)))
        return out

    def _drain(self) -> None:
        q = self._q
        if not q:
            return
        rows = []
        while q:
            rows.append(q.popleft())
        # In slices: one numpy pass over thousands of prompts outgrows the caches (x10 the cost per row at 2,000).
        lines = [x for k in range(0, len(rows), _SLICE) for x in self._lines(rows[k:k + _SLICE])]
        self._f.write("\n".join(lines) + "\n")
        self._f.flush()
        self.written += len(lines)
        if self._f.tell() >= self.max_bytes:
            self._f.close()
            self.rotations += 1
            self._rotate_name()
            self._f = self._open()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval):
            self._drain()
        self._drain()

    def close(self) -> None:
        """Write what is buffered and close the file."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self._f.close()

    def collector(self) -> Collector:
        return _RecorderMetrics(self)


class _RecorderMetrics(Collector):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def collect(self) -> Iterator[Metric]:
        w = CounterMetricFamily("llmsched_gateway_record_written", "request records written by --record")
        w.add_metric([], self.rec.written)
        yield w
        d = CounterMetricFamily("llmsched_gateway_record_dropped",
                                "request records dropped by --record because its buffer was full")
        d.add_metric([], self.rec.dropped)
        yield d
