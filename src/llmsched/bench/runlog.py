"""An append-only JSON-lines log of finished runs, keyed by run id, so an interrupted sweep resumes.

One line per finished run (or measured capacity), written with a single write and flushed at once: a kill
loses at most the run in flight and can leave only the last line truncated, which is dropped on reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs: dict[str, dict[str, Any]] = {}
        self.capacities: dict[str, float] = {}
        self.dropped_tail = False

    def load(self) -> RunLog:
        """Read what an earlier (possibly interrupted) sweep logged."""
        if not self.path.exists():
            return self
        lines = self.path.read_text().splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if i == len(lines):  # a write cut short by the interruption
                    self.dropped_tail = True
                    self._rewrite(lines[: i - 1])
                    break
                raise ValueError(f"{self.path}:{i}: not a JSON line ({e.msg}); delete the line or the file") from None
            kind = rec.get("kind") if isinstance(rec, dict) else None
            if kind == "run" and "run_id" in rec:
                self.runs[rec["run_id"]] = rec
            elif kind == "capacity" and "key" in rec:
                self.capacities[rec["key"]] = float(rec["capacity_rps"])
            else:
                raise ValueError(f"{self.path}:{i}: expected a run or capacity record with 'kind'")
        return self

    def _rewrite(self, lines: list[str]) -> None:
        self.path.write_text("".join(line + "\n" for line in lines))

    def reset(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.runs.clear()
        self.capacities.clear()

    def _append(self, rec: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()

    def add_run(self, rec: dict[str, Any]) -> None:
        rec = {"kind": "run", **rec}
        self._append(rec)
        self.runs[rec["run_id"]] = rec

    def add_capacity(self, key: str, capacity: float) -> None:
        self._append({"kind": "capacity", "key": key, "capacity_rps": capacity})
        self.capacities[key] = capacity
