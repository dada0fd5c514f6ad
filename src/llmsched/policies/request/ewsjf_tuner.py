"""EWSJF component 4: Bayesian meta-optimisation of the scoring weights and the refine threshold.

One trial per window of `window` completions, through Optuna's ask/tell interface with its seeded TPE sampler
(a Bayesian sampler: a density-ratio surrogate of the objective with an expected-improvement criterion; the GP
sampler needs torch, which this project does not ship). The search space is the paper's bounded box
Theta = {a_u, b_u, a_f, b_f, alpha} (`RANGES`), so no trial can leave it.

Objective of a window (lower is better), from the completions' measured TTFT:

    J = mean(ln(1 + s)) + tail_weight * q95(ln(1 + s)),   s = TTFT / C_prefill(prompt)

s is the slowdown: TTFT in units of the request's own prefill time. The mean slowdown is the quantity SJF-like
orders minimise and it weighs a short request's wait as much as a long one's relative to their sizes (mean TTFT
would let long requests dominate); the log keeps a handful of burst-delayed requests from swamping a window;
the 95th percentile term charges a setting for sacrificing the long class.

Bursty arrivals: a window's latencies mostly reflect its load, not the trial's parameters. The tuner measures
each window's arrival rate; when it differs from the median rate of the last five windows by more than `burst_ratio` either way,
the trial is told as FAILED, so the surrogate never learns from it, and the same parameters are retried on the
next window. The first `warmup_windows` windows (an empty system filling up) are discarded the same way.
After `max_trials` told trials the tuner freezes on the best parameters seen: it converges
rather than keeps exploring. Both keep it from diverging under bursts.
"""

from __future__ import annotations

import math

import numpy as np

RANGES: dict[str, tuple[float, float]] = {
    "a_u": (-0.001, 0.01),
    "b_u": (0.1, 5.0),
    "a_f": (-0.001, 0.001),
    "b_f": (0.01, 2.0),
    "alpha": (0.5, 3.0),
}


def window_objective(slowdowns: np.ndarray, tail_weight: float = 0.25) -> float:
    """J of one window (see the module docstring)."""
    z = np.log1p(np.maximum(np.asarray(slowdowns, dtype=np.float64), 0.0))
    return float(z.mean() + tail_weight * np.quantile(z, 0.95))


class MetaOptimizer:
    """Ask/tell loop: `record` each completion's slowdown; a finished window returns the next parameters."""

    def __init__(
        self,
        start: dict[str, float],
        seed: int = 0,
        window: int = 200,
        max_trials: int = 30,
        startup_trials: int = 6,
        tail_weight: float = 0.25,
        burst_ratio: float = 2.5,
        ranges: dict[str, tuple[float, float]] | None = None,
        warmup_windows: int = 1,
    ) -> None:
        if window < 2 or max_trials < 1 or burst_ratio <= 1:
            raise ValueError(
                f"need window >= 2, max_trials >= 1, burst_ratio > 1; got {window}, {max_trials}, {burst_ratio}"
            )
        import optuna  # here, not at module level: listing the policies (`llmsched presets`) stays fast
        from optuna.distributions import FloatDistribution

        self.ranges = dict(ranges or RANGES)
        self.dists = {k: FloatDistribution(lo, hi) for k, (lo, hi) in self.ranges.items()}
        self.window = window
        self.max_trials = max_trials
        self.tail_weight = tail_weight
        self.burst_ratio = burst_ratio
        self._warmup = warmup_windows
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # a trial per window would flood the log
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials)
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        # The first trial evaluates the configured defaults (clipped into the box).
        self.study.enqueue_trial({k: min(hi, max(lo, start[k])) for k, (lo, hi) in self.ranges.items()})
        self.trial = self.study.ask(self.dists)
        self.current: dict[str, float] = dict(self.trial.params)
        self.frozen = False
        self.told = 0
        self.failed = 0
        self.history: list[tuple[dict[str, float], float]] = []
        self._buf: list[float] = []
        self._arrivals = 0
        self._t0: float | None = None
        self._rates: list[float] = []  # arrival rates of the last windows

    def record_arrival(self, now: float) -> None:
        self._arrivals += 1
        if self._t0 is None:
            self._t0 = now

    def record(self, slowdown: float, now: float) -> dict[str, float] | None:
        """Add one completion; returns new parameters to apply when this completion closed a window."""
        if self.frozen:
            return None
        if self._t0 is None:
            self._t0 = now
        self._buf.append(slowdown)
        if len(self._buf) < self.window:
            return None
        return self._close(now)

    def _close(self, now: float) -> dict[str, float] | None:
        span = max(now - (now if self._t0 is None else self._t0), 1e-9)
        rate = self._arrivals / span
        j = window_objective(np.asarray(self._buf), self.tail_weight)
        self._buf.clear()
        self._arrivals, self._t0 = 0, now
        ref = float(np.median(self._rates)) if self._rates else None
        burst = ref is not None and rate > 0 and abs(math.log(rate / ref)) > math.log(self.burst_ratio)
        self._rates.append(rate)
        del self._rates[:-5]  # a lasting change of load becomes the reference after three windows
        warm = self._warmup > 0
        self._warmup -= 1
        if burst or warm:
            # Same parameters on the next window; the surrogate does not see this one.
            from optuna.trial import TrialState

            self.study.tell(self.trial, state=TrialState.FAIL)
            self.failed += 1
            self.study.enqueue_trial(self.current)
        else:
            self.study.tell(self.trial, j)
            self.told += 1
            self.history.append((dict(self.current), j))
        if self.told >= self.max_trials:
            self.frozen = True
            self.current = dict(self.study.best_params)
            return dict(self.current)
        self.trial = self.study.ask(self.dists)
        self.current = dict(self.trial.params)
        return dict(self.current)

    @property
    def best(self) -> tuple[dict[str, float], float] | None:
        from optuna.trial import TrialState

        done = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        if not done:
            return None
        t = min(done, key=lambda t: t.value if t.value is not None else math.inf)
        return dict(t.params), float(t.value or 0.0)
