"""The `phases` generator: a workload whose class mix shifts over time."""

from __future__ import annotations

import numpy as np
import pytest

from llmsched.workload import load_workload
from llmsched.workload.spec import WorkloadSpec


def spec(**params: object) -> WorkloadSpec:
    return WorkloadSpec(kind="synthetic", name="phases", num_requests=600, rate=20.0, params=params)


def test_phases_follow_each_other_and_shift_the_class_mix() -> None:
    reqs = load_workload(spec(phases=[{"generator": "chat", "fraction": 1}, {"generator": "code", "fraction": 2}]))
    assert len(reqs) == 600
    arrivals = np.array([r.arrival for r in reqs])
    assert np.all(np.diff(arrivals) >= 0)
    classes = [r.cls for r in reqs]
    assert classes.count("chat") == 200 and classes.count("code") == 400
    # Every chat request comes before every code request: the mix shifts at the phase boundary.
    last_chat = max(i for i, c in enumerate(classes) if c == "chat")
    first_code = min(i for i, c in enumerate(classes) if c == "code")
    assert last_chat < first_code


def test_phase_rate_factor_and_relabel() -> None:
    reqs = load_workload(spec(phases=[
        {"generator": "chat", "fraction": 1, "label": "calm"},
        {"generator": "chat", "fraction": 1, "rate_factor": 4, "label": "burst"},
    ]))
    calm = [r.arrival for r in reqs if r.cls == "calm"]
    burst = [r.arrival for r in reqs if r.cls == "burst"]
    rate = lambda a: (len(a) - 1) / (a[-1] - a[0])  # noqa: E731
    assert rate(burst) == pytest.approx(4 * rate(calm), rel=0.35)


def test_phases_never_share_prefixes_or_sessions_by_numbering() -> None:
    one = {"generator": "prefix-heavy", "fraction": 1}
    reqs = load_workload(spec(phases=[one, one]), seed=1)
    half = len(reqs) // 2
    first = {h for r in reqs[:half] for h in (r.block_hashes or ())}
    second = {h for r in reqs[half:] for h in (r.block_hashes or ())}
    assert first and second and not first & second
    s1 = {r.session for r in reqs[:half] if r.session}
    s2 = {r.session for r in reqs[half:] if r.session}
    assert not s1 & s2


def test_phases_are_deterministic_and_validate_names() -> None:
    a = load_workload(spec(), seed=5)
    b = load_workload(spec(), seed=5)
    assert [(r.arrival, r.prompt_len, r.output_len, r.cls) for r in a] == [
        (r.arrival, r.prompt_len, r.output_len, r.cls) for r in b
    ]
    with pytest.raises(ValueError, match="unknown workload generator policy 'nope'|unknown workload generator"):
        load_workload(spec(phases=[{"generator": "nope"}]))
