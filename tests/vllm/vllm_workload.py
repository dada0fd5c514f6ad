"""Random request streams for driving vLLM's scheduler and ours with the same input."""

from __future__ import annotations

import random
from dataclasses import dataclass

from llmsched.vllm.harness import FakeRunnerLoop, Limits, build_scheduler, make_request


@dataclass(frozen=True)
class Spec:
    rid: str
    step: int  # the scheduler step before which it arrives
    prompt: tuple[int, ...]
    max_tokens: int
    priority: int


def random_stream(seed: int, n: int = 40, block_size: int = 16, shared: bool = False) -> list[Spec]:
    """`n` requests over ~n/2 steps: mostly short prompts, some long ones, optional shared prefixes."""
    rng = random.Random(seed)
    prefixes = [tuple(rng.randrange(100, 30000) for _ in range(rng.choice((16, 32, 48)))) for _ in range(3)]
    out, step = [], 0
    for i in range(n):
        step += rng.choice((0, 0, 1, 1, 2))
        length = rng.randint(200, 600) if rng.random() < 0.3 else rng.randint(3, 80)
        body = tuple(rng.randrange(100, 30000) for _ in range(length))
        prompt = (rng.choice(prefixes) + body) if shared and rng.random() < 0.6 else body
        out.append(Spec(f"r{i}", step, prompt, rng.randint(1, 64), rng.randint(0, 3)))
    return out


def run(
    scheduler_cls: type | None, limits: Limits, stream: list[Spec], clock_step: float = 0.01
) -> list[tuple]:
    """Drive a scheduler through `stream`; one (scheduled tokens per request, preempted ids) per step."""
    sched = build_scheduler(limits, scheduler_cls=scheduler_cls)
    t = [0.0]
    if scheduler_cls is not None:
        sched.clock = lambda: t[0]
    loop = FakeRunnerLoop(sched)
    pending = sorted(stream, key=lambda s: s.step)
    trace, step = [], 0
    while pending or loop.has_work:
        while pending and pending[0].step <= step:
            s = pending.pop(0)
            arrival = s.step + int(s.rid[1:]) * 1e-4  # distinct, increasing in enqueue order
            loop.add(make_request(s.rid, s.prompt, s.max_tokens, limits.block_size, s.priority, arrival))
        r = loop.step()
        trace.append((tuple(sorted(r.scheduled.items())), tuple(sorted(r.preempted))))
        step += 1
        t[0] = step * clock_step
        assert step < 5000, "the run does not end"
    return trace
