"""Policies chosen through environment variables (vLLM starts our classes itself: no other way in)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from llmsched.core.registry import Registry


def create_from_env(registry: Registry[Any], name: str, params_var: str, env: Mapping[str, str]) -> Any:
    """`registry`'s policy `name` with the JSON object of parameters in `env[params_var]`; a ValueError that
    names the variable on bad JSON or a bad parameter (the caller checks the name)."""
    raw = env.get(params_var) or "{}"
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{params_var} is not valid JSON ({e.msg} at char {e.pos}): {raw!r}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{params_var} must be a JSON object of parameters, got {raw!r}")
    try:
        return registry.create(name, params)
    except ValueError as e:
        raise ValueError(f"{params_var}: {e}") from None
