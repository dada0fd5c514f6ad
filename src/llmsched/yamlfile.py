"""Reading a user's YAML file (scenario, sweep, gateway config) with errors that name the file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The parsed file; raises `error("<path>:<line>: invalid YAML: ...")` or `error("<path>: cannot read")`."""
    p = Path(path)
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise error(f"{p}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise error(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{p}{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from None
