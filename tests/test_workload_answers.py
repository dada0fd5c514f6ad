"""Multi-turn generators name the answer's blocks, and the follow-up turn's prompt carries exactly them."""

from __future__ import annotations

from llmsched.workload import load_workload
from llmsched.workload.spec import WorkloadSpec


def test_follow_up_prompt_starts_with_previous_prompt_and_answer_blocks() -> None:
    reqs = load_workload(WorkloadSpec(kind="synthetic", name="prefix-heavy", num_requests=400, rate=50.0), seed=2)
    by_session: dict[str, list] = {}
    for r in reqs:
        by_session.setdefault(r.session, []).append(r)
    checked = 0
    for turns in by_session.values():
        for prev, nxt in zip(turns, turns[1:], strict=False):
            assert prev.output_hashes, "a turn with a follow-up names its answer's blocks"
            known = (prev.block_hashes or ()) + prev.output_hashes
            full = (prev.prompt_len + prev.output_len) // 16
            assert len(known) == full
            assert nxt.block_hashes is not None and nxt.block_hashes[:full] == known
            checked += 1
    assert checked > 20
