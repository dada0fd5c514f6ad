"""A workload as columns (numpy arrays), shaped once and turned into `Request` objects at the end.

Loaders and generators produce `Columns`; the shaping options (window, rate scale, limit) are vector
operations on them, and a million requests cost three numpy arrays until `Request` objects are wanted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmsched.core.types import Request

Hashes = tuple[int, ...] | None
# A row's hashes, or a callable that computes them when the `Request` is built (see `prefix.BlockRef`).
LazyHashes = Hashes | Callable[[], Hashes]


@dataclass(slots=True)
class Columns:
    """Requests in column form. `arrival` is in seconds on any origin; rows need not be sorted.

    `cls_codes[i]` indexes `cls_names`; `session` and `hashes` are per-row lists or None when no row has one;
    a `hashes` entry may be a callable, expanded when the request is built.
    `notes` carries loader remarks (e.g. rows dropped) for the docs and the CLI.
    """

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    cls_codes: np.ndarray
    cls_names: list[str | None]
    session: list[str | None] | None = None
    hashes: list[LazyHashes] | None = None
    notes: dict[str, int] = field(default_factory=dict)
    # Per row: hashes of the answer's blocks, continuing `hashes` (multi-turn generators know them).
    out_hashes: list[Hashes] | None = None
    priority: np.ndarray | None = None  # per row (vLLM semantics, lower first); None: all 0
    # Per row: the LoRA adapter the request names (None: the base model); None when no row names one.
    adapter: list[str | None] | None = None

    @classmethod
    def single_class(
        cls,
        arrival: np.ndarray,
        prompt: np.ndarray,
        output: np.ndarray,
        label: str | None,
        session: list[str | None] | None = None,
        hashes: list[LazyHashes] | None = None,
    ) -> Columns:
        n = len(arrival)
        return cls(
            np.asarray(arrival, dtype=np.float64),
            np.asarray(prompt, dtype=np.int64),
            np.asarray(output, dtype=np.int64),
            np.zeros(n, dtype=np.int32),
            [label],
            session,
            hashes,
        )

    def __len__(self) -> int:
        return len(self.arrival)

    def relabel(self, label: str | None) -> Columns:
        """All rows get one class label (used when mixing sources)."""
        self.cls_codes = np.zeros(len(self), dtype=np.int32)
        self.cls_names = [label]
        return self

    def take(self, idx: np.ndarray) -> Columns:
        """Rows `idx` (an integer index array), in that order."""
        sel = idx.tolist()
        return Columns(
            self.arrival[idx],
            self.prompt[idx],
            self.output[idx],
            self.cls_codes[idx],
            self.cls_names,
            None if self.session is None else [self.session[i] for i in sel],
            None if self.hashes is None else [self.hashes[i] for i in sel],
            dict(self.notes),
            None if self.out_hashes is None else [self.out_hashes[i] for i in sel],
            None if self.priority is None else self.priority[idx],
            None if self.adapter is None else [self.adapter[i] for i in sel],
        )

    @staticmethod
    def concat(parts: Sequence[Columns]) -> Columns:
        """Rows of all parts, class names merged by label."""
        names: list[str | None] = []
        codes = []
        for p in parts:
            remap = np.empty(len(p.cls_names), dtype=np.int32)
            for j, name in enumerate(p.cls_names):
                if name not in names:
                    names.append(name)
                remap[j] = names.index(name)
            codes.append(remap[p.cls_codes] if len(p) else p.cls_codes)
        any_session = any(p.session is not None for p in parts)
        any_hashes = any(p.hashes is not None for p in parts)
        any_out = any(p.out_hashes is not None for p in parts)
        any_prio = any(p.priority is not None for p in parts)
        any_adapter = any(p.adapter is not None for p in parts)
        notes: dict[str, int] = {}
        for p in parts:
            for k, v in p.notes.items():
                notes[k] = notes.get(k, 0) + v
        return Columns(
            np.concatenate([p.arrival for p in parts]),
            np.concatenate([p.prompt for p in parts]),
            np.concatenate([p.output for p in parts]),
            np.concatenate(codes),
            names,
            [s for p in parts for s in (p.session or [None] * len(p))] if any_session else None,
            [h for p in parts for h in (p.hashes or [None] * len(p))] if any_hashes else None,
            notes,
            [h for p in parts for h in (p.out_hashes or [None] * len(p))] if any_out else None,
            np.concatenate([p.priority if p.priority is not None else np.zeros(len(p), np.int64) for p in parts])
            if any_prio else None,
            [a for p in parts for a in (p.adapter or [None] * len(p))] if any_adapter else None,
        )

    def iter_requests(self) -> Iterator[Request]:
        """`Request` objects, rid = row index; rows must already be sorted and rebased (see `shape`)."""
        names = self.cls_names
        labels = [names[c] for c in self.cls_codes.tolist()] if len(names) > 1 else [names[0]] * len(self)
        sessions = self.session if self.session is not None else [None] * len(self)
        hashes = self.hashes if self.hashes is not None else [None] * len(self)
        outs = self.out_hashes if self.out_hashes is not None else [None] * len(self)
        prios = self.priority.tolist() if self.priority is not None else [0] * len(self)
        adapters = self.adapter if self.adapter is not None else [None] * len(self)
        rows = zip(
            self.arrival.tolist(),
            self.prompt.tolist(),
            self.output.tolist(),
            hashes,
            labels,
            sessions,
            outs,
            prios,
            adapters,
            strict=True,
        )
        for rid, (t, p, o, h, c, s, oh, pr, a) in enumerate(rows):
            yield Request(rid, t, p, o, h() if callable(h) else h, c, s, pr, output_hashes=oh, adapter=a)

    def to_requests(self) -> list[Request]:
        return list(self.iter_requests())
