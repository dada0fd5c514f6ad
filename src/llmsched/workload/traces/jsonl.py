"""JSON-lines reading shared by the trace loaders: blank lines skipped, errors naming file and line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llmsched.workload.errors import WorkloadError


def json_lines(lines: Iterable[str], path: Path, start: int = 1) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) of every non-blank line."""
    for i, line in enumerate(lines, start=start):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkloadError.at(path, i, f"not valid JSON ({e.msg} at column {e.colno})") from None
