"""User files read by several loaders (scenario, sweep, gateway config, calibration): a mistake is a ValueError
naming the file (one `error:` line in the CLI), never a traceback from Python's keyword-argument machinery."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmsched.bench.scenario import load_scenario
from llmsched.bench.sweep import load_sweep
from llmsched.gateway.config import load_config
from llmsched.model.calibration import load_calibration

SCENARIO = """name: t
workloads:
  - {label: w, kind: synthetic, name: chat, num_requests: 20}
policies:
  - {label: p, request: fcfs, router: round-robin}
"""


@pytest.mark.parametrize(
    ("loader", "text"),
    [
        (load_scenario, SCENARIO + "1: 2\n"),
        (load_sweep, "scenarios: [default]\n1: 2\n"),
        (load_config, "backends: ['http://a:1']\n1: 2\n"),
        (load_calibration, "compute_scale: 1.0\n1: 2\n"),
    ],
    ids=["scenario", "sweep", "gateway-config", "calibration"],
)
def test_non_string_top_level_key_names_the_file_and_key(
    tmp_path: Path, loader: Callable[[Path], Any], text: str
) -> None:
    """YAML `1: 2` at the top level is reported as `<file>: 1: ...`, not `TypeError: keywords must be strings`."""
    p = tmp_path / "f.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=rf"{p.name}: 1: Keys should be strings"):
        loader(p)
