"""`load_workload`: the shaping options (window, limit, rate scale, target rate) and spec validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmsched.workload import WorkloadError, WorkloadSpec, iter_workload, load_workload

CSV = "TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(
    f"2023-11-16 18:00:{s:02d}.0000000,{10 + s},{1 + s}" for s in range(0, 50, 5)
)  # 10 requests, one every 5 s


@pytest.fixture
def csv_path(tmp_path: Path) -> str:
    p = tmp_path / "t.csv"
    p.write_text(CSV, encoding="utf-8")
    return str(p)


def arrivals(reqs: list) -> list[float]:
    return [r.arrival for r in reqs]


def test_window_rebases_to_first_kept(csv_path: str) -> None:
    reqs = load_workload(WorkloadSpec(kind="trace", path=csv_path, window=(10, 25)))
    assert [r.prompt_len for r in reqs] == [20, 25, 30]
    assert arrivals(reqs) == [0.0, 5.0, 10.0]
    assert [r.rid for r in reqs] == [0, 1, 2]


def test_rate_scale_limit_and_num_requests(csv_path: str) -> None:
    reqs = load_workload(WorkloadSpec(kind="trace", path=csv_path, rate_scale=2.0, limit=4))
    assert arrivals(reqs) == [0.0, 2.5, 5.0, 7.5]
    both = load_workload(WorkloadSpec(kind="trace", path=csv_path, limit=4, num_requests=3))
    assert len(both) == 3


def test_target_rate_for_a_trace(csv_path: str) -> None:
    reqs = load_workload(WorkloadSpec(kind="trace", path=csv_path, rate=1.0))
    assert (len(reqs) - 1) / reqs[-1].arrival == pytest.approx(1.0)
    with pytest.raises(WorkloadError, match="not both"):
        load_workload(WorkloadSpec(kind="trace", path=csv_path, rate=1.0, rate_scale=2.0))


def test_synthetic_options() -> None:
    base = load_workload(WorkloadSpec(name="chat", rate=10, num_requests=400), seed=3)
    fast = load_workload(WorkloadSpec(name="chat", rate=10, num_requests=400, rate_scale=4), seed=3)
    assert np.allclose(np.array(arrivals(fast)) * 4, arrivals(base))
    win = load_workload(WorkloadSpec(name="chat", rate=10, num_requests=400, window=(5, 10)), seed=3)
    assert win[0].arrival == 0.0 and 0 < len(win) < 400
    assert all(r.arrival < 5.0 for r in win)
    assert len(load_workload(WorkloadSpec(name="chat", limit=7))) == 7
    assert len(load_workload(WorkloadSpec(name="chat"))) == 1000  # default count


def test_iter_matches_load() -> None:
    spec = WorkloadSpec(name="prefix-heavy", rate=10, num_requests=300)
    a, b = load_workload(spec, seed=5), list(iter_workload(spec, seed=5))
    key = [(r.rid, r.arrival, r.prompt_len, r.output_len, r.block_hashes, r.cls, r.session) for r in a]
    assert key == [
        (r.rid, r.arrival, r.prompt_len, r.output_len, r.block_hashes, r.cls, r.session) for r in b
    ]


def test_spec_errors(csv_path: str) -> None:
    with pytest.raises(WorkloadError, match="set kind: trace"):
        load_workload(WorkloadSpec(path=csv_path))
    with pytest.raises(WorkloadError, match="block_size"):
        load_workload(WorkloadSpec(), block_size=0)
    with pytest.raises(WorkloadError, match="window"):
        load_workload(WorkloadSpec(kind="trace", path=csv_path, window=(5, 5)))
    with pytest.raises(WorkloadError, match="unknown trace params"):
        load_workload(WorkloadSpec(kind="trace", path=csv_path, params={"foo": 1}))
    assert len(load_workload(WorkloadSpec(kind="trace", name="auto", path=csv_path))) == 10


def test_window_past_the_end_is_an_empty_workload_error(csv_path: str) -> None:
    with pytest.raises(WorkloadError, match="the workload is empty.*after the window"):
        load_workload(WorkloadSpec(kind="trace", path=csv_path, window=(100, 200)))
