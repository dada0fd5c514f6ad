"""Windowed load recording for online placers: only the `window` steps before each check are kept.

A check every `interval` steps needs the sum of the last `window` steps' loads, nothing older, so the
recorder keeps one [L, E] running sum instead of vLLM's [window, L, E] ring buffer (same result, O(L x E)
memory).
"""

from __future__ import annotations

import numpy as np

from llmsched.policies.expert.base import Placement, Topology, padded_static_phy2log


class WindowRecorder:
    def __init__(self, window: int, interval: int, first_check: int | None = None) -> None:
        if window < 1 or interval < 1:
            raise ValueError(f"window ({window}) and interval ({interval}) must be >= 1")
        self.window = window
        self.interval = interval
        self.next_check = interval if first_check is None else first_check
        self.sum: np.ndarray | None = None
        self.steps = 0

    def observe(self, loads: np.ndarray, first_step: int) -> None:
        """Add the steps of `loads` [k, L, E] that fall in [next_check - window, next_check)."""
        k = loads.shape[0]
        lo = max(first_step, self.next_check - self.window)
        hi = min(first_step + k, self.next_check)
        if hi <= lo:
            return
        part = loads[lo - first_step : hi - first_step].sum(0, dtype=np.float64)
        self.sum = part if self.sum is None else self.sum + part
        self.steps += hi - lo

    def wants(self, first_step: int, k: int) -> bool:
        return max(first_step, self.next_check - self.window) < min(first_step + k, self.next_check)

    def observe_repeated(self, loads: np.ndarray, first_step: int, k: int) -> None:
        """Same as `observe` of k copies of `loads` [L, E], in O(L x E)."""
        lo = max(first_step, self.next_check - self.window)
        hi = min(first_step + k, self.next_check)
        if hi <= lo:
            return
        part = loads * float(hi - lo)
        self.sum = part if self.sum is None else self.sum + part
        self.steps += hi - lo

    def due(self, step: int) -> bool:
        return step >= self.next_check

    def take(self, step: int) -> np.ndarray | None:
        """The window's summed loads (None if nothing was recorded); schedules the next check after `step`."""
        out = self.sum
        self.sum = None
        self.steps = 0
        while self.next_check <= step:
            self.next_check += self.interval
        return out


class WindowedPlacer:
    """Mixin of the online placers: start from the static layout and hand the engine's loads to
    `self.recorder_` (a `WindowRecorder` the placer builds from its window and interval)."""

    recorder_: WindowRecorder

    def initial(self, loads: np.ndarray, topology: Topology, flows: np.ndarray | None = None) -> Placement:
        return Placement.from_phy2log(padded_static_phy2log(topology), topology.num_experts)

    def observe(self, loads: np.ndarray, first_step: int) -> None:
        self.recorder_.observe(loads, first_step)

    def wants(self, first_step: int, k: int) -> bool:
        return self.recorder_.wants(first_step, k)

    def observe_repeated(self, loads: np.ndarray, first_step: int, k: int) -> None:
        self.recorder_.observe_repeated(loads, first_step, k)

    def next_check(self) -> int | None:
        return self.recorder_.next_check
