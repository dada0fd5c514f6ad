"""Messages about names and validated fields: the closest valid name, and a pydantic error on one line.

Every layer reports a bad name or key the same way: what was given, the closest valid one, the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Sequence
from typing import Any, get_args


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(what: str, name: object, choices: Iterable[str]) -> str:
    """`unknown model preset 'x' (did you mean 'y'?); known: a, b, c`."""
    known = sorted(choices)
    return f"unknown {what} {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}"


def error_message(err: dict[str, Any]) -> str:
    """One pydantic error's message, phrased for a user: `must be greater than 0 (got 0.0)`."""
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if msg.startswith("Input should be"):
        msg = "must be" + msg[len("Input should be"):]
    if err.get("type") == "extra_forbidden":
        msg = "unknown key"
    if "input" in err and err.get("type") not in ("missing", "extra_forbidden") and not isinstance(
            err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg


def fields_at(model: Any, loc: Sequence[Any]) -> list[str]:
    """Field names of the pydantic model that `loc` (a ValidationError location, minus its last part) points
    into, walking nested models, lists and optionals; empty when it cannot tell."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _model_in(annotation: Any) -> Any:
    if hasattr(annotation, "model_fields"):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation(e: Any, model: Any = None, key_of: Callable[[Sequence[Any]], str | None] | None = None) -> str:
    """A pydantic ValidationError as `key: message; key: message`.

    `model` (the validated class) lets an unknown key get the closest valid one; `key_of` names a location
    the user's way (a CLI flag) when it can, else the dotted location is used.
    """
    model = model if model is not None else getattr(e, "_model", None)
    parts = []
    for err in e.errors():
        loc = tuple(err.get("loc", ()))
        key = (key_of(loc) if key_of else None) or ".".join(str(x) for x in loc) or "(top level)"
        extra = ""
        if err.get("type") == "extra_forbidden" and model is not None and loc:
            known = fields_at(model, loc[:-1])
            if known:
                extra = did_you_mean(loc[-1], known) + f"; known: {', '.join(known)}"
        parts.append(f"{key}: {error_message(err)}{extra}")
    return "; ".join(parts)
