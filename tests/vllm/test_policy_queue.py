"""PolicyQueue: vLLM's RequestQueue verbs over our request policies."""

from __future__ import annotations

import pytest

from llmsched.policies.request import REQUEST_POLICIES
from llmsched.vllm.harness import make_request
from llmsched.vllm.queue import PolicyQueue


def _queue(policy: str, **params) -> tuple[PolicyQueue, list]:
    q = PolicyQueue(REQUEST_POLICIES.create(policy, params), clock=lambda: 100.0)
    reqs = [
        make_request(f"r{i}", [3] * n, 4, 16, arrival_time=float(i)) for i, n in enumerate([50, 10, 30, 20])
    ]
    for r in reqs:
        q.add_request(r)
    return q, reqs


def test_verbs_in_sjf_order() -> None:
    q, (a, b, c, d) = _queue("sjf")
    assert len(q) == 4 and q
    assert list(q) == [b, d, c, a] and q[0] is b  # iteration: the policy's order, the queue unchanged
    assert q.peek_request() is b and q.pop_request() is b
    q.prepend_request(b)  # a preemption: back at its own place (first again)
    assert q.peek_request() is b
    q.remove_request(d)
    with pytest.raises(ValueError):
        q.remove_request(d)
    q.remove_requests([a, d])  # d already gone: ignored
    assert list(q) == [b, c]
    popped = [q.pop_request(), q.pop_request()]
    q.prepend_requests(reversed(popped))  # skipped this step: back in place, whatever the order given
    assert list(q) == [b, c]
    assert [q.pop_request(), q.pop_request()] == [b, c]
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.peek_request()
    with pytest.raises(IndexError):
        q.pop_request()


def test_iteration_of_a_learning_policy_leaves_it_untouched() -> None:
    """ewsjf has no sort key: iteration drains a copy, the queue keeps its requests and its next pick."""
    q, reqs = _queue("ewsjf", meta_optimize=False)
    head = q.peek_request()
    order = list(q)
    assert sorted(r.request_id for r in order) == sorted(r.request_id for r in reqs)
    assert order[0] is head and q.peek_request() is head and len(q) == 4


def test_fcfs_keeps_enqueue_order_on_equal_arrival() -> None:
    q = PolicyQueue(REQUEST_POLICIES.create("fcfs"))
    reqs = [make_request(f"{9 - i}", [1] * 5, 1, 16, arrival_time=1.0) for i in range(4)]
    for r in reqs:
        q.add_request(r)
    assert list(q) == reqs
