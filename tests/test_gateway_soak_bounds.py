"""State that a long-running gateway keeps per request must stay bounded (found by benchmarks/soak_gateway.py:
the prefix index kept one aging checkpoint per dispatch, forever, when no TTL was set)."""

from __future__ import annotations

from llmsched.core.types import InstanceSnapshot, Request
from llmsched.policies.instance import ROUTERS


def _run(router_params: dict[str, object], n: int) -> int:
    r = ROUTERS.create("lmetric", router_params)
    r.resize(2)
    snaps = [InstanceSnapshot(i, 0.0, 0, 0, 0.0, 1000, 1000, 0, healthy=True) for i in range(2)]
    for k in range(n):
        req = Request(rid=k, arrival=float(k), prompt_len=64, output_len=4, block_hashes=(k, k + 1, k + 2, k + 3))
        i = r.route(req, snaps, float(k))
        r.on_dispatch(req, i, float(k))
        r.on_first_token(req, i, float(k))
        r.on_finish(req, i, float(k))
    assert r.index_ is not None
    return sum(len(c) for c in r.index_.checkpoints_)


def test_prefix_index_keeps_no_growing_history_without_a_ttl() -> None:
    assert _run({}, 3000) == 0


def test_prefix_index_history_is_aged_with_a_ttl() -> None:
    assert 0 < _run({"index_ttl_s": 10.0}, 3000) <= 20  # ~ the touches of the last 10 s
