"""Recorded expert loads (EPLB / vLLM JSON): round trip, replay, and clear errors for malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmsched.workload.expert_loads import RecordedRouting, load_expert_loads


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "loads.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=1))
    return path


def test_reads_load_history(tmp_path: Path) -> None:
    doc = {"load_history": [{"logical_expert_load": [[1, 2, 3], [4, 5, 6]]}, {"logical_expert_load": [[0, 0, 0], [1, 1, 1.5]]}]}
    w = load_expert_loads(_write(tmp_path, doc))
    assert w.shape == (2, 2, 3)
    assert w[1, 1, 2] == 1.5
    r = RecordedRouting(w)
    np.testing.assert_allclose(r.popularity(None, 0.0, step=0)[0], [1 / 6, 2 / 6, 3 / 6])
    np.testing.assert_allclose(r.popularity(None, 0.0, step=3)[0], [1 / 3] * 3)  # step 1 again; empty -> uniform
    assert r.flows(r.profile()).shape == (1, 3, 3)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ('{"load_history": [', r"loads\.json:1:\d+: not valid JSON"),
        ({"steps": []}, "expected an object with a 'load_history' list"),
        ({"load_history": []}, "non-empty list"),
        ({"load_history": [{"physical_expert_load": [[1]]}]}, r"load_history\[0\]: expected an object with 'logical_expert_load'"),
        ({"load_history": [{"logical_expert_load": [1, 2]}]}, r"load_history\[0\]\.logical_expert_load: expected a \[layer\]\[expert\]"),
        ({"load_history": [{"logical_expert_load": [[1, 2], [3]]}]}, r"logical_expert_load\[1\]: layers have different expert counts"),
        ({"load_history": [{"logical_expert_load": [[1, -2]]}]}, r"logical_expert_load\[0\]\[1\]: -2 is not a non-negative"),
        ({"load_history": [{"logical_expert_load": [[1, "x"]]}]}, r"\[0\]\[1\]: 'x' is not"),
        (
            {"load_history": [{"logical_expert_load": [[1, 2]]}, {"logical_expert_load": [[1, 2, 3]]}]},
            r"load_history\[1\]: shape 1 layers x 3 experts differs from step 0's 1 x 2",
        ),
    ],
)
def test_malformed_files_name_file_and_problem(tmp_path: Path, doc: object, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(ValueError, match=message) as info:
        load_expert_loads(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read expert load file"):
        load_expert_loads(tmp_path / "absent.json")
