"""EWSJF component 3: density-weighted scoring of queue heads, with an online power-law fit of prefill cost.

Score of the head request (size b tokens, waiting w seconds) of queue i among n queues (ascending lengths):

    qf    = (n - i) / (b + 1)                         shorter queues and shorter heads first
    cs    = w / C(b)                                  wait in units of the head's own prefill time
    score = qf * (w_base + w_urg * cs + w_fair * ln(b + 1))
    w_urg = a_u * mean_len_i + b_u,   w_fair = a_f * mean_len_i + b_f

The highest score wins. The score is linear in w, so a queue caches A and B with score = A + B * w for its
current head and only recomputes them when the head, the weights or the fit change: a scheduling round costs
one multiply-add per non-empty queue. With the tuner's ranges a_u * mean_len can be negative enough to make
w_urg <= 0, which would let a head's score stop growing with its wait (starvation); w_urg is therefore
floored at `min_urgency` > 0 and w_fair at 0, which keeps the paper's "score grows without bound with
waiting time" true for every parameter value.

C(b) = coeff * b^exp is fitted by least squares on (ln tokens, ln seconds) of the prefills the engine reports,
with exponential forgetting so that it follows a change of batch mix. Until enough distinct sizes were seen it
returns the prior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class PrefillFit:
    """Online log-log regression of prefill seconds on prefill tokens."""

    __slots__ = ("coeff", "exp", "decay", "min_samples", "_sw", "_sx", "_sy", "_sxx", "_sxy", "n", "version")

    def __init__(
        self, coeff: float = 1e-4, exp: float = 1.0, decay: float = 0.995, min_samples: int = 8
    ) -> None:
        if coeff <= 0 or exp <= 0 or not 0 < decay <= 1:
            raise ValueError(
                f"PrefillFit needs coeff > 0, exp > 0, 0 < decay <= 1; got {coeff}, {exp}, {decay}"
            )
        self.coeff = coeff
        self.exp = exp
        self.decay = decay
        self.min_samples = min_samples
        self._sw = self._sx = self._sy = self._sxx = self._sxy = 0.0
        self.n = 0
        self.version = 0  # bumped when (coeff, exp) change

    def observe(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        x, y, d = math.log(tokens), math.log(seconds), self.decay
        self._sw = d * self._sw + 1.0
        self._sx = d * self._sx + x
        self._sy = d * self._sy + y
        self._sxx = d * self._sxx + x * x
        self._sxy = d * self._sxy + x * y
        self.n += 1

    def refit(self) -> bool:
        """Update (coeff, exp) from the sums; returns whether they changed. Exponent kept in [0.5, 2]."""
        if self.n < self.min_samples:
            return False
        w = self._sw
        vx = self._sxx / w - (self._sx / w) ** 2
        if vx < 1e-6:  # all prefills of one size: keep the exponent, fit the level only
            e = self.exp
        else:
            e = min(2.0, max(0.5, (self._sxy / w - self._sx * self._sy / (w * w)) / vx))
        c = math.exp(self._sy / w - e * self._sx / w)
        if (c, e) == (self.coeff, self.exp):
            return False
        self.coeff, self.exp = c, e
        self.version += 1
        return True

    def cost(self, tokens: int) -> float:
        """Predicted prefill seconds of `tokens` new tokens (never below a microsecond)."""
        return max(1e-6, self.coeff * max(tokens, 1) ** self.exp)


@dataclass(frozen=True, slots=True)
class ScoreWeights:
    a_u: float = 0.002
    b_u: float = 1.0
    a_f: float = 0.0
    b_f: float = 0.5
    w_base: float = 1.0
    min_urgency: float = 1e-3

    def urgency(self, mean_len: float) -> float:
        return max(self.min_urgency, self.a_u * mean_len + self.b_u)

    def fairness(self, mean_len: float) -> float:
        return max(0.0, self.a_f * mean_len + self.b_f)


def score_line(
    index: int, num_queues: int, size: int, c_prefill: float, w_base: float, w_urg: float, w_fair: float
) -> tuple[float, float]:
    """(A, B) such that the head's score after waiting w seconds is A + B * w."""
    qf = (num_queues - index) / (size + 1)
    return qf * (w_base + w_fair * math.log(size + 1)), qf * w_urg / c_prefill


def head_score(
    index: int,
    num_queues: int,
    size: int,
    wait: float,
    c_prefill: float,
    weights: ScoreWeights,
    mean_len: float,
) -> float:
    """The score itself (reference form of `score_line`, for tests and tools)."""
    a, b = score_line(
        index,
        num_queues,
        size,
        c_prefill,
        weights.w_base,
        weights.urgency(mean_len),
        weights.fairness(mean_len),
    )
    return a + b * wait
