"""The one error type of the workload layer, so callers can tell bad input from bugs."""

from __future__ import annotations


class WorkloadError(ValueError):
    """Bad workload input: a malformed trace line, an unknown format or generator, inconsistent options.

    Messages about data files name the file and the 1-based line (the header counts as line 1).
    """

    @classmethod
    def at(cls, path: object, line: int, what: str) -> WorkloadError:
        return cls(f"{path}:{line}: {what}")
