"""The one error type of the workload layer, so callers can tell bad input from bugs."""

from __future__ import annotations

# Most tokens a trace row may name for one prompt or answer: far past any model's context, and small enough that
# counts (and sums of them) stay exact in int64; a larger value is a corrupt row, not a request.
MAX_TOKENS = 2**31 - 1


class WorkloadError(ValueError):
    """Bad workload input: a malformed trace line, an unknown format or generator, inconsistent options.

    Messages about data files name the file and the 1-based line (the header counts as line 1).
    """

    @classmethod
    def at(cls, path: object, line: int, what: str) -> WorkloadError:
        return cls(f"{path}:{line}: {what}")
