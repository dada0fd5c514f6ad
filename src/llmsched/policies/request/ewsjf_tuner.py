"""EWSJF component 4: Bayesian meta-optimisation of Theta = {a_u, b_u, a_f, b_f, alpha}, judged on a twin.

Live traffic only ever runs the *incumbent* parameters (the configured defaults until a challenger proves
better), so a bad trial costs no user anything. Trials are judged on a *twin* instead: a window of real traffic
(a contiguous block of `window` arrivals, closed once all of them have finished: arrival, size, measured TTFT,
KV held = prompt + answer tokens, measured decode time), preceded by the previous window as unscored context
(the backlog it left is what the window's requests queue behind), replayed through a fresh EWSJF with the trial's
parameters (its partition fitted on the live size window with the trial's alpha) in front of a model engine
(`replay`): each iteration admits in the policy's order while prompts fit the token budget and KV fits the
capacity, takes C_prefill(tokens admitted) seconds (the live fit, which now models exactly that), and a request
holds its KV for the decode time it really had. The KV capacity is the one unknown: it is calibrated on every
window (bisection) so that the incumbent's twin reproduces the mean TTFT the window measured. On `mixed` the
calibrated capacity comes out at 45-69k tokens against the simulated engine's 60.7k: queueing there is mostly
waiting for KV, which is what makes the order of long and short requests matter. Every trial of a window sees
the same arrivals: comparisons are paired, and a load burst moves the incumbent and the trial alike.

Objective of a window (what the user sees, from the twin's TTFTs):
    J    = mean TTFT of the window's short half (requests at or below the window's median size; `objective`
           "mean": of every request),
    tail = p99 E2E of its long tail (sizes at or above the 90th percentile; E2E = the twin's TTFT + the decode
           time the request really had, the figure the user sees),
subject to tail <= `tail_limit` x the same tail under FCFS in the same twin. (A TTFT tail let the tuner adopt,
at overload, settings that starve the long class: on `mixed` at load 1.1 the twin's TTFT bound held while the
live long-class p99 E2E went from 1.29x to 2.09x FCFS.) A trial's violation is
v = max(0, tail / (tail_limit x tail_fcfs) - 1). Optuna's seeded TPE sampler (ask/tell; a Bayesian density-ratio
surrogate with an expected-improvement criterion) proposes `per_window` trials a window over the paper's box
(`RANGES`), the first ones a one-factor-at-a-time screen (`screen`: each parameter at either end of its range,
the others at the incumbent's values), and is told ln(J / J_incumbent) + 10 v, lower is better.

The twin against what users had (`live_tail`, on by default): the incumbent is the one setting that also ran
live, so its twin tail can be checked against the live one (measured TTFT + decode of the same long decile,
over the twin's FCFS tail). On the Azure conv+code trace the twin saw the incumbent at 1.2-1.8x FCFS on windows
where live it was 2-7x (bursts leave a backlog no twin of two windows sees). The twin's error on the incumbent,
bias = (live - 1) / (predicted - 1) when above 1, scales every candidate's excess over FCFS in the twin on that
window (an order that does not delay the long class past FCFS is not touched by the error). The twin also
starts from the live engine's state where the policy gives it (`Window.start`: requests of older windows still
queued or running when the context began), not from an empty engine.

Adoption: a trial *beats* the incumbent on a window, feasibility first: when the incumbent breaks the tail
constraint, by a violation v smaller by the fraction `margin`; otherwise by v = 0 and a J lower by `margin`. The window's best such trial becomes the challenger; it is
replayed on the next `confirm` windows (fresh arrivals) and adopted only if it beats the incumbent on each. When
the live tail itself broke the bound, the window's best trial is adopted at once: the live breach is the
evidence confirmation waits for, and waiting costs users the tail.
After `max_trials` trials the tuner stops proposing; a pending challenger still gets its confirmation.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from llmsched.core.types import Request
from llmsched.policies.request.base import RequestPolicy
from llmsched.policies.request.fcfs import FCFS

RANGES: dict[str, tuple[float, float]] = {
    "a_u": (-0.001, 0.01),
    "b_u": (0.1, 5.0),
    "a_f": (-0.001, 0.001),
    "b_f": (0.01, 2.0),
    "alpha": (0.5, 3.0),
}
# The starvation guard as a repair (`guard=True`; `EWSJF` asks for it unless the user set a guard): theta gains
# guard_rate r >= 0, which sets max_wait_s = (FCFS's p99 wait of the long decile in the twin) / r (0 = no
# guard), and guard_share, the guard's share of admissions (see `keyed`). The scale is the window's own FCFS
# wait, so one grid fits every workload and load. These candidates are judged only on windows where the
# incumbent breaks the tail constraint.
GUARD_GRID: tuple[tuple[float, float], ...] = tuple((r, sh) for r in (0.5, 1.0, 2.0, 4.0) for sh in (0.5, 1.0))
Theta = dict[str, float]


@dataclass(frozen=True, slots=True)
class Window:
    """A contiguous block of arrivals, all with their first token: what the twin replays."""

    arrival: np.ndarray  # seconds, ascending
    size: np.ndarray  # tokens the policy sized each request by
    ttft: np.ndarray  # measured TTFT, seconds
    hold: np.ndarray  # KV tokens held while decoding (prompt + answer)
    decode: np.ndarray  # measured seconds from first token to finish
    warm: int = 0  # the first `warm` rows (the previous window) are replayed as context, not scored
    # The live engine's state at `start` (the context's first arrival): rows that arrived before it are the
    # requests still in the live engine then, queued (first token after `start`) or running (holding their KV
    # until first token + decode). The twin starts there instead of from an empty engine.
    start: float = -math.inf


@dataclass(frozen=True, slots=True)
class Score:
    j: float  # mean TTFT of the short half
    violation: float  # relative excess of the long tail over tail_limit x FCFS's

    def beats(self, other: Score, margin: float) -> bool:
        """Feasibility first: against an `other` beyond the tail constraint, a violation smaller by the margin
        (J aside: the constraint is the user's bound); otherwise no violation of its own and a J lower by it."""
        if other.violation > 0:
            return self.violation < (1.0 - margin) * other.violation
        return self.violation <= 0 and self.j < (1.0 - margin) * other.j


def replay(pol: RequestPolicy, w: Window, cost: Callable[[float], float], budget: int, kv: float) -> np.ndarray:
    """TTFT of each request of `w` in the twin, admitted in `pol`'s order.

    The twin engine admits, at the start of each iteration, requests in `pol`'s order (popping at one `now`,
    as the engine does) while their prompts fit the token budget (the first one always goes) and their KV
    (prompt + answer tokens, `w.hold`) fits the free share of `kv`; the iteration takes cost(tokens admitted)
    seconds and its requests get their first token at its end. A request then holds its KV for the decode time
    it really had (`w.decode`). When nothing fits, time moves to the next release or arrival. With `w.start`
    set, the twin starts at that time from the live engine's state (see `Window`), not from an empty engine.
    """
    n = len(w.arrival)
    sizes = [max(1, int(x)) for x in w.size.tolist()]
    arr = w.arrival.tolist()
    hold = np.minimum(w.hold, kv).tolist()
    dec = w.decode.tolist()
    reqs = [Request(i, a, s, 1) for i, (a, s) in enumerate(zip(arr, sizes, strict=True))]
    ttft = np.empty(n)
    held: list[tuple[float, float]] = []  # (release time, KV tokens)
    used = 0.0
    t, k = w.start, 0
    while k < n and arr[k] < t:  # the live engine's state at the start: running requests hold KV, others queue
        first = arr[k] + float(w.ttft[k])
        if first <= t:
            ttft[k] = w.ttft[k]
            heapq.heappush(held, (first + dec[k], hold[k]))
            used += hold[k]
        else:
            pol.push(reqs[k], arr[k])
        k += 1
    while k < n or pol:
        while held and held[0][0] <= t:
            used -= heapq.heappop(held)[1]
        if not held:
            used = 0.0  # no rounding residue: an empty engine always admits
        if not pol and k < n:
            t = max(t, arr[k])
        while k < n and arr[k] <= t:
            pol.push(reqs[k], arr[k])
            k += 1
        batch: list[int] = []
        tokens = 0
        while (r := pol.peek(t)) is not None and used + hold[r.rid] <= kv + 1e-9:
            if batch and tokens + sizes[r.rid] > budget:
                break
            pol.pop(t)
            batch.append(r.rid)
            tokens += sizes[r.rid]
            used += hold[r.rid]
        if not batch:  # KV full: wait for a release (or an arrival, which may be smaller)
            nxt = [x for x in (held[0][0] if held else None, arr[k] if k < n else None) if x is not None and x > t]
            t = min(nxt) if nxt else t
            continue
        t += cost(tokens)
        for i in batch:
            ttft[i] = t - arr[i]
            heapq.heappush(held, (t + dec[i], hold[i]))
    return ttft


class TwinTuner:
    """Ask/tell over `RANGES` with a twin judge; `close(window)` returns new live parameters when adopted.

    `make(theta)` builds a fresh policy with those parameters (its partition fitted on the live size window);
    `cost(tokens)` is the live C_prefill; `budget` the engine's token budget per iteration.
    """

    def __init__(
        self,
        start: Theta,
        make: Callable[[Theta], RequestPolicy],
        cost: Callable[[float], float],
        budget: int = 8192,
        seed: int = 0,
        per_window: int = 4,
        max_trials: int = 60,
        tail_limit: float = 1.5,
        margin: float = 0.05,
        objective: str = "short",
        confirm: int = 2,
        screen: bool = True,
        startup_trials: int = 8,
        ranges: dict[str, tuple[float, float]] | None = None,
        guard: bool = False,
        live_tail: bool = True,
    ) -> None:
        if per_window < 1 or max_trials < 0 or tail_limit <= 0 or not 0 <= margin < 1:
            raise ValueError(
                "need per_window >= 1, max_trials >= 0, tail_limit > 0, 0 <= margin < 1; got "
                f"{per_window}, {max_trials}, {tail_limit}, {margin}"
            )
        self.ranges = dict(ranges or RANGES)
        import optuna  # here, not at module level: listing the policies (`llmsched presets`) stays fast
        from optuna.distributions import FloatDistribution

        self.dists = {k: FloatDistribution(lo, hi) for k, (lo, hi) in self.ranges.items()}
        self.make = make
        self.cost = cost
        self.budget = budget
        self.per_window = per_window
        self.max_trials = max_trials
        self.tail_limit = tail_limit
        self.margin = margin
        if objective not in ("short", "mean"):
            raise ValueError(f"objective must be 'short' or 'mean', got {objective!r}")
        self.objective = objective
        self.confirm = confirm
        self._confirmed = 0  # windows the pending challenger has beaten the incumbent on so far
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a trial per window would flood the log
        self.study = optuna.create_study(
            direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
        )
        self.incumbent: Theta = {k: min(hi, max(lo, start[k])) for k, (lo, hi) in self.ranges.items()}
        if screen:  # one factor at a time: each parameter at either end of its range, the others at the start
            for k, ends in self.ranges.items():
                for v in ends:
                    self.study.enqueue_trial({**self.incumbent, k: v})
        self.guard = guard
        self.live_tail = live_tail
        self.bias = 1.0  # the last window's live / twin excess of the incumbent's long tail, at least 1 (`close`)
        if guard:
            self.incumbent.update(guard_rate=max(0.0, start.get("guard_rate", 0.0)),
                                  guard_share=min(1.0, max(1e-3, start.get("guard_share", 1.0))))
        self.challenger: Theta | None = None
        self.trials = 0
        self.windows = 0
        self.adopted = 0
        self.history: list[tuple[Theta, float]] = []  # (trial, told value)
        self.kv = 0.0  # the last window's calibrated KV capacity (tokens)
        self.wait_ref = 0.0  # FCFS's p99 TTFT of the long decile in the last window's twin (the guard's scale)

    # -- the twin ----------------------------------------------------------------------------------------
    def run(self, pol: RequestPolicy, w: Window, kv: float) -> np.ndarray:
        return replay(pol, w, self.cost, self.budget, kv)

    def calibrate(self, w: Window) -> float:
        """The KV capacity (tokens) at which the incumbent's twin has the measured mean TTFT: bisection on its
        log between the largest single request and the whole window (more KV, less waiting)."""
        target = float(w.ttft[w.warm :].mean())
        lo, hi = math.log(float(w.hold.max())), math.log(float(w.hold.sum()) + 1.0)
        for _ in range(12):
            mid = (lo + hi) / 2
            if float(self.run(self.make(self.incumbent), w, math.exp(mid))[w.warm :].mean()) > target:
                lo = mid
            else:
                hi = mid
        return math.exp(hi)  # the smallest capacity found whose twin waits no longer than measured

    @staticmethod
    def tail(ttft: np.ndarray, w: Window, tail_fcfs: float) -> float:
        """p99 E2E of the window's long decile (TTFT + the decode time it really had) over FCFS's in the twin."""
        size = w.size[w.warm :]
        long = size >= np.quantile(size, 0.9)
        return float(np.quantile((ttft[w.warm :] + w.decode[w.warm :])[long], 0.99)) / tail_fcfs

    def score(self, ttft: np.ndarray, w: Window, tail_fcfs: float) -> Score:
        size = w.size[w.warm :]
        short = size <= np.median(size) if self.objective == "short" else slice(None)
        tail = self.tail(ttft, w, tail_fcfs)
        tail = 1.0 + (tail - 1.0) * self.bias if tail > 1.0 else tail
        return Score(float(ttft[w.warm :][short].mean()), max(0.0, tail / self.tail_limit - 1.0))

    def judge(self, theta: Theta, w: Window, tail_fcfs: float) -> Score:
        return self.score(self.run(self.make(theta), w, self.kv), w, tail_fcfs)

    # -- one window --------------------------------------------------------------------------------------
    def close(self, w: Window) -> Theta | None:
        """Judge the pending challenger and this window's trials on `w`; the new incumbent if one is adopted."""
        self.windows += 1
        size = w.size[w.warm :]
        long = size >= np.quantile(size, 0.9)
        if self.wait_ref <= 0:  # first window: the measured long wait scales the incumbent's guard in calibration
            self.wait_ref = max(float(np.quantile(w.ttft[w.warm :][long], 0.99)), 1e-3)
        self.kv = self.calibrate(w)
        ttft_fcfs = self.run(FCFS(), w, self.kv)[w.warm :]
        self.wait_ref = max(float(np.quantile(ttft_fcfs[long], 0.99)), 1e-3)
        tail_fcfs = max(float(np.quantile((ttft_fcfs + w.decode[w.warm :])[long], 0.99)), 1e-9)
        # The twin's tail error, measured on the incumbent (the one setting that also ran live): how much more
        # the long tail exceeded FCFS's live (measured TTFT + decode) than the twin predicted. Every candidate's
        # excess over FCFS in the twin is scaled by it when the twin was optimistic, so the constraint holds on
        # what users had, not only in the twin. (A twin that sees no excess at all counts as 1% of FCFS's tail.)
        self.bias, live = 1.0, 0.0
        ttft_inc = self.run(self.make(self.incumbent), w, self.kv)
        if self.live_tail:
            live = self.tail(w.ttft, w, tail_fcfs)
            self.bias = max(1.0, (live - 1.0) / max(self.tail(ttft_inc, w, tail_fcfs) - 1.0, 0.01))
        inc = self.score(ttft_inc, w, tail_fcfs)
        adopted = None
        if self.challenger is not None:
            if not self.judge(self.challenger, w, tail_fcfs).beats(inc, self.margin):
                self.challenger = None
            else:
                self._confirmed += 1
                if self._confirmed >= self.confirm:
                    self.incumbent = adopted = self.challenger
                    self.adopted += 1
                    self.challenger = None
                    inc = self.judge(self.incumbent, w, tail_fcfs)
        best: tuple[Score, Theta] | None = None
        for _ in range(min(self.per_window, self.max_trials - self.trials)):
            trial = self.study.ask(self.dists)
            theta = {**self.incumbent, **trial.params}  # the guard (not searched by TPE) stays the incumbent's
            s = self.judge(theta, w, tail_fcfs)
            value = math.log(max(s.j, 1e-12) / max(inc.j, 1e-12)) + 10.0 * s.violation
            self.study.tell(trial, value)
            self.history.append((theta, value))
            self.trials += 1
            if s.beats(inc, self.margin) and (best is None or s.beats(best[0], 0.0)):
                best = (s, theta)
        if self.guard and inc.violation > 0 and self.trials < self.max_trials:
            # Repair: the incumbent breaks the tail constraint; try the guard grid on it (feasibility first).
            for rate, share in GUARD_GRID:
                theta = {**self.incumbent, "guard_rate": rate, "guard_share": share}
                s = self.judge(theta, w, tail_fcfs)
                if s.beats(inc, self.margin) and (best is None or s.beats(best[0], 0.0)):
                    best = (s, theta)
        if best is not None and live > self.tail_limit and adopted is None:
            # The live tail itself broke the bound: that is the evidence confirmation waits for, and waiting
            # costs users the tail. The best repair of this window is adopted at once.
            self.incumbent = adopted = best[1]
            self.adopted += 1
            self.challenger = None
        elif best is not None and self.challenger is None:
            self.challenger, self._confirmed = best[1], 0
        return None if adopted is None else dict(adopted)

    @property
    def done(self) -> bool:
        return self.trials >= self.max_trials and self.challenger is None
