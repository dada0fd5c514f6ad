"""Gimbal's request layer (arXiv 2602.21626): SJF with priority-aware aging, and a starvation bound per class.

The paper names the idea (shortest job first, with an aging credit that depends on the request's priority)
but not its formula (../shared/papers/NOTES.md, section 3); this is our design, documented in
docs/request-policies.md.

Each request has a job size s (uncached prompt tokens, as in `sjf`) and a priority class p (`req.priority`,
vLLM semantics: lower is more important, default 0). Its class ages at

    r_p = aging_rate * priority_factor ** (-p)      tokens per second of waiting (`class_rates` may override),

so priority 0 ages like `sjf-aging` and each step towards higher priority ages `priority_factor` times faster.
A waiting request's aged size is s - r_p * wait, and requests are ranked by the time at which their aged size
reaches zero:

    d = arrival + s / r_p            smaller first; ties by arrival, then rid.

Within one class this is exactly `sjf-aging`'s order (d * r_p = s + r_p * arrival). Across classes a job's size
counts in seconds of its own class's aging, so a high-priority job is treated as a job `priority_factor` times
shorter and it ages `priority_factor` times faster. d is fixed at push time: the order never changes with time
alone, so one heap serves every verb in O(log n) (time invariant, like `sjf-aging`).

Starvation bound (per class). Sizes are >= 0, so a request y arriving at or after d_x has d_y >= arrival_y >= d_x
and is never ranked before x (on a tie x arrived first). So a request x of class p and size s is overtaken only
by requests that arrive less than

    W_p(s) = s / r_p

seconds after it, whatever their class or size. It is admitted within Q + A + 1 admissions after its arrival,
Q the requests queued when it arrived and A those arriving within W_p(s) after it; with a server that admits
at least as fast as requests arrive it waits at most W_p(s) plus the time to admit the requests ranked before
it at a + W_p(s). For the largest job S of a workload W_p = S / r_p: higher-priority classes have shorter
windows. The optional `max_wait_s` guard (`keyed`) adds a hard bound in admissions on top.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from llmsched.core.types import Request
from llmsched.policies.request.base import REQUEST_POLICIES
from llmsched.policies.request.keyed import Key
from llmsched.policies.request.sjf import SJF, SJFParams

MAX_LEVEL = 16  # priorities beyond +-16 levels age as the 16th (keeps rates finite for any int priority)


class GimbalParams(SJFParams):
    aging_rate: float = Field(
        50.0, gt=0, description="tokens of size a priority-0 request loses per second of waiting (as sjf-aging)"
    )
    # 4: set a priori, not fitted to a result: a high-priority short prompt of the `mixed` workload (64-512
    # tokens) then ranks like a 16-128-token normal one, ahead of most normal short prompts, while a
    # high-priority long prompt (2,048-8,192) still ranks behind every normal short one.
    priority_factor: float = Field(
        4.0, ge=1, description="each priority level towards 'more important' ages this many times faster"
    )
    class_rates: dict[int, Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, description="aging rate (tokens/s) per priority value, overriding the factor for those classes"
    )


@REQUEST_POLICIES.register("gimbal")
class Gimbal(SJF):
    """Key (arrival + size / rate(priority), arrival, rid); see the module docstring for the bound."""

    Params = GimbalParams
    # Preemption victims stay the engine's default (the last admitted). vLLM's priority rule (least important,
    # latest arrival) was measured to cost most of the short class's gain: the latest arrivals are the short
    # requests SJF just admitted (mixed, 0.9 load, seeds 4-6: short-class gain over fcfs 16x instead of 40x).

    def rate(self, priority: int) -> float:
        """Aging rate (tokens per second of waiting) of priority class `priority`."""
        p = self.params
        rates = p.class_rates  # type: ignore[attr-defined]
        if rates and priority in rates:
            return rates[priority]
        level = min(MAX_LEVEL, max(-MAX_LEVEL, priority))
        return p.aging_rate * p.priority_factor ** (-level)  # type: ignore[attr-defined]

    def key(self, req: Request) -> Key:
        return (req.arrival + self.size(req) / self.rate(req.priority), req.arrival, req.rid)

    def overtake_window_s(self, req: Request) -> float:
        """W_p(s): seconds after `req`'s arrival during which a new arrival can still be admitted before it."""
        return self.size(req) / self.rate(req.priority)
