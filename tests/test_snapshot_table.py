"""The simulator's snapshot table: live rows equal the engines' own snapshots at every arrival, the lazy
KV of engines inside decode runs included; bounds hold; the change log names the rows written."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmsched.core.snapshots import NOT_EXPORTED, SnapshotTable
from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance.base import Router
from llmsched.sim.config import SimConfig
from llmsched.sim.run import build_cluster, load_requests
from llmsched.workload.spec import WorkloadSpec


class _Checker(Router):
    """Compares the table with every engine's snapshot at each arrival, then routes round robin."""

    def __init__(self, engines: list) -> None:
        super().__init__()
        self.engines = engines
        self.checked = 0
        self.in_runs = 0

    def route(self, req: Request, snapshots: Sequence[InstanceSnapshot], now: float) -> int:
        tab = snapshots
        assert isinstance(tab, SnapshotTable)
        upper, lower = tab.kv_upper.copy(), tab.free_lower.copy()  # before the lazy refresh
        self.in_runs += sum(e.lazy_kv() is not None for e in self.engines)
        kv, free = tab.kv_usage.copy(), tab.free_blocks.copy()  # computed before the engines catch up
        want = [e.snapshot(now) for e in self.engines]
        assert np.array_equal(kv, [s.kv_usage for s in want])
        assert np.array_equal(free, [s.num_free_blocks for s in want])
        assert np.array_equal(tab.running, [s.num_running for s in want])
        assert np.array_equal(tab.waiting, [s.num_waiting for s in want])
        assert np.array_equal(tab.pending, [s.pending_prefill_tokens for s in want])
        assert (upper >= tab.kv_usage).all() and (lower <= tab.free_blocks).all()
        assert [s.kv_usage for s in tab] == [s.kv_usage for s in want]
        self.checked += 1
        return req.rid % len(self.engines)


def test_live_rows_match_engine_snapshots_inside_decode_runs() -> None:
    cfg = SimConfig(workload=WorkloadSpec(kind="synthetic", name="chat", num_requests=300, rate=12.0), instances=3)
    cluster = build_cluster(cfg)
    checker = _Checker(cluster.engines)
    cluster.router = checker
    checker.resize(3)
    cluster.run(load_requests(cfg))
    assert checker.checked == 300
    assert checker.in_runs > 100  # the lazy closed form was exercised, not only event-time rows


def test_scraped_rows_export_no_pending_and_log_changes() -> None:
    tab = SnapshotTable(3)
    _, pos = tab.changed_since(0)
    tab.put(InstanceSnapshot(1, 0.5, 2, 1, 0.25, 750, 1000, None))
    rows, pos2 = tab.changed_since(pos)
    assert rows == [1] and pos2 == pos + 1
    assert tab.pending[1] == NOT_EXPORTED and tab[1].pending_prefill_tokens is None
    assert tab[1].num_running == 2 and tab.free_lower[1] == 750
    tab.set_healthy(2, False)
    assert tab.healthy_rows().tolist() == [0, 1] and tab.changed_since(pos2)[0] == [2]
    tab.LOG_KEEP = 4
    for k in range(10):
        tab.set_healthy(0, bool(k % 2))
    assert tab.changed_since(pos2)[0] is None  # fell off the log: readers compare versions instead
