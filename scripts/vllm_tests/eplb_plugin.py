"""pytest plugin: vLLM's EPLB algorithm tests (tests/distributed/test_eplb_algo.py) against our EPLB policies.

With LLMSCHED_EPLB_UNDER_TEST=eplb|hotspot|affinity the name the tests call, `DefaultEplbPolicy` of
`vllm.distributed.eplb.policy.default`, is rebound to our class before the test module is imported.
Only the tests of the policy's contract run: a test that never calls `rebalance_experts` (load statistics,
`compute_logical_maps`, the default policy's own `preserve_intragpu_slots` helper) is deselected, and so,
for hotspot and affinity, is a test asserting DeepSeek's exact layout (`expected_phy2log`): only `eplb`
claims DeepSeek's algorithm. Deselections are printed with their reason.
"""

from __future__ import annotations

import inspect
import os

import pytest


def _policy() -> str:
    return os.environ.get("LLMSCHED_EPLB_UNDER_TEST", "").strip()


def pytest_configure(config) -> None:  # noqa: ARG001 - pytest hook signature
    name = _policy()
    if not name:
        return
    import vllm.distributed.eplb.policy.default as default_mod

    from llmsched.vllm.eplb import POLICIES

    if name not in POLICIES:
        raise pytest.UsageError(
            f"LLMSCHED_EPLB_UNDER_TEST must be one of {', '.join(POLICIES)}, got {name!r}"
        )
    default_mod.DefaultEplbPolicy = POLICIES[name]


def _why_not(item: pytest.Item, name: str) -> str | None:
    fn = getattr(item, "function", None)
    src = inspect.getsource(fn) if fn is not None else ""
    if "rebalance_experts" not in src:
        return "does not call the policy (rebalance_experts)"
    if name != "eplb" and "expected_phy2log" in src:
        return "asserts DeepSeek's exact layout (only eplb implements DeepSeek's algorithm)"
    return None


def pytest_collection_modifyitems(config, items: list[pytest.Item]) -> None:
    name = _policy()
    if not name:
        return
    keep, drop = [], []
    for item in items:
        why = _why_not(item, name)
        (drop if why else keep).append((item, why))
    if drop:
        config.hook.pytest_deselected(items=[i for i, _ in drop])
        for item, why in drop:
            print(f"llmsched-eplb[{name}]: deselected {item.nodeid}: {why}")
    items[:] = [i for i, _ in keep]
