"""EWSJF component 1: Refine-and-Prune, an unsupervised partition of recent prompt lengths into queues.

Three passes over the sorted window (all numpy, O(n log n) for the sort and O(n) per refine level):
1. seed: 1-D k-means (k=3: short / medium / long) by Lloyd's algorithm on log lengths, initialised at fixed
   quantiles so that it needs no random numbers. Prompt lengths are heavy-tailed and what matters for
   scheduling is their ratio, so the clustering (and the prune cost below) works on log(1 + length).
2. refine: a cluster is split at the middle of its largest gap when that gap exceeds `alpha` times the
   cluster's mean gap (scaled by ln n, the largest gap a uniform cluster of n shows by chance); both halves recurse (depth <= `max_depth`) until no such gap remains or the cluster is
   narrower than `min_width` tokens. A split must leave `min_frac` of the window on each side, so outliers do
   not become queues of their own.
3. prune: adjacent clusters are merged until at most `max_queues` remain, cheapest merge first. The cost of a
   merge is the loss of scheduling resolution: the requests of both queues become indistinguishable to the
   scorer. We measure it with Ward's criterion n_i n_j / (n_i + n_j) (mu_i - mu_j)^2 (the growth of the
   within-queue sum of squares), which is small for a sparse sliver next to a dense mode and large for two
   dense, well separated modes. (The paper's utility (rho_i + rho_j) / |mu_i - mu_j| ranks pairs by density
   over distance; Ward keeps its intent - merge what is sparse and close - with a proper scale.)

The result is a list of length ranges [lo, hi] (the min and max observed in each queue) with the statistics
the policy needs; gaps between ranges are where routing creates bubble queues.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Partition:
    """Queues as length ranges, ascending: queue i holds lengths in [lo[i], hi[i]]."""

    lo: np.ndarray  # int64, min length of each queue
    hi: np.ndarray  # int64, max length of each queue
    mean: np.ndarray  # float64, mean length
    var: np.ndarray  # float64, length variance
    density: np.ndarray  # float64, fraction of the window in each queue

    def __len__(self) -> int:
        return len(self.lo)


def kmeans_1d(sorted_x: np.ndarray, k: int = 3, iters: int = 50) -> np.ndarray:
    """Cut points of Lloyd's k-means on sorted 1-D data: cluster j is sorted_x[cuts[j]:cuts[j+1]].

    Clusters of sorted 1-D data are contiguous, so each iteration is k binary searches and a prefix sum.
    """
    n = len(sorted_x)
    k = max(1, min(k, n))
    csum = np.concatenate(([0.0], np.cumsum(sorted_x)))
    centers = np.quantile(sorted_x, (np.arange(k) + 0.5) / k)
    cuts = np.zeros(k + 1, dtype=np.int64)
    for _ in range(iters):
        mids = (centers[:-1] + centers[1:]) / 2
        inner = np.searchsorted(sorted_x, mids, side="right")
        new_cuts = np.concatenate(([0], inner, [n]))
        if np.array_equal(new_cuts, cuts):
            break
        cuts = new_cuts
        counts = np.diff(cuts)
        sums = csum[cuts[1:]] - csum[cuts[:-1]]
        nonempty = counts > 0
        centers = np.where(nonempty, sums / np.maximum(counts, 1), centers)
    # Empty clusters (ties, tiny windows) are dropped.
    return np.unique(cuts)


def _refine(
    logx: np.ndarray,
    raw: np.ndarray,
    a: int,
    b: int,
    alpha: float,
    min_width: float,
    min_count: int,
    depth: int,
    max_depth: int,
    out: list[int],
) -> None:
    """Append the inner cut points of [a, b) after recursive gap splits."""
    n = b - a
    if depth >= max_depth or n < 2 * min_count or raw[b - 1] - raw[a] < min_width:
        return
    gaps = np.diff(logx[a:b])
    span = logx[b - 1] - logx[a]
    if span <= 0:
        return
    # Only cut where both sides keep min_count samples.
    lo, hi = min_count - 1, n - min_count
    if hi <= lo:
        return
    j = lo + int(np.argmax(gaps[lo:hi]))
    # The largest of n-1 gaps of a uniform cluster is about ln(n) mean gaps: only a gap beyond alpha times
    # that is evidence of two groups.
    if gaps[j] <= alpha * np.log(n) * span / (n - 1):
        return
    cut = a + j + 1
    _refine(logx, raw, a, cut, alpha, min_width, min_count, depth + 1, max_depth, out)
    out.append(cut)
    _refine(logx, raw, cut, b, alpha, min_width, min_count, depth + 1, max_depth, out)


def _stats(raw: np.ndarray, cuts: np.ndarray) -> Partition:
    n = len(raw)
    lo = raw[cuts[:-1]].astype(np.int64)
    hi = raw[cuts[1:] - 1].astype(np.int64)
    counts = np.diff(cuts).astype(np.float64)
    c1 = np.concatenate(([0.0], np.cumsum(raw)))
    c2 = np.concatenate(([0.0], np.cumsum(raw * raw)))
    s1 = c1[cuts[1:]] - c1[cuts[:-1]]
    s2 = c2[cuts[1:]] - c2[cuts[:-1]]
    mean = s1 / counts
    var = np.maximum(s2 / counts - mean * mean, 0.0)
    return Partition(lo=lo, hi=hi, mean=mean, var=var, density=counts / n)


def prune(cuts: np.ndarray, x: np.ndarray, max_queues: int) -> np.ndarray:
    """Merge adjacent clusters of sorted `x` (log lengths), cheapest Ward cost first, to `max_queues` at most."""
    cuts = np.asarray(cuts, dtype=np.int64)
    c1 = np.concatenate(([0.0], np.cumsum(x)))
    while len(cuts) - 1 > max_queues:
        counts = np.diff(cuts).astype(np.float64)
        means = (c1[cuts[1:]] - c1[cuts[:-1]]) / counts
        ni, nj = counts[:-1], counts[1:]
        cost = ni * nj / (ni + nj) * np.diff(means) ** 2
        cuts = np.delete(cuts, int(np.argmin(cost)) + 1)
    return cuts


def refine_and_prune(
    lengths: np.ndarray,
    alpha: float = 1.5,
    max_queues: int = 8,
    k: int = 3,
    min_width: float = 64.0,
    max_depth: int = 10,
    min_frac: float = 0.01,
) -> Partition:
    """Partition a window of prompt lengths into at most `max_queues` ascending length ranges.

    Raises:
        ValueError: on an empty window or non-positive `max_queues`.
    """
    if max_queues < 1:
        raise ValueError(f"max_queues must be >= 1, got {max_queues}")
    raw = np.sort(np.asarray(lengths, dtype=np.float64))
    if raw.size == 0:
        raise ValueError("refine_and_prune needs at least one prompt length")
    logx = np.log1p(np.maximum(raw, 0.0))
    seed = kmeans_1d(logx, k)
    min_count = max(2, int(min_frac * raw.size))
    cuts: list[int] = [0]
    for a, b in zip(seed[:-1], seed[1:], strict=True):
        _refine(logx, raw, int(a), int(b), alpha, min_width, min_count, 0, max_depth, cuts)
        cuts.append(int(b))
    merged = prune(np.asarray(cuts, dtype=np.int64), logx, max_queues)
    return _stats(raw, merged)
