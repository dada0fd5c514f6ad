"""The per-block prefix index that `policies.instance.prefix_index` replaced, kept as the oracle of its behaviour.

Every (instance, block) is an entry of a per-instance dict kept in LRU-stamp order, plus an owners bitmask per
block: simple enough to be obviously right, and ~0.4 us of memory-bound dict work a block (too slow for 50 KiB
prompts at a gateway). `test_prefix_index.py` drives both with the same random operations and requires the same
blocks, the same stamps and the same evictions.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from itertools import islice, takewhile

import numpy as np


class ReferencePrefixIndex:
    """Per-instance LRU sets of chained block hashes.

    Args:
        num_instances: instances indexed (grow with `resize`).
        capacity_blocks: most blocks remembered per instance (an engine's `num_total_blocks` is the natural
            value: the engine cannot hold more).
        slack: fraction of capacity allowed above it before eviction brings it back to capacity (0: evict as
            blocks come in, the smoothest latency).
    """

    def __init__(self, num_instances: int, capacity_blocks: int, slack: float = 0.0, track_age: bool = True) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        if slack < 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        self.slack = slack
        self.owners_: dict[int, int] = {}  # hash -> bitmask of instances holding it
        # Per instance: hash -> LRU stamp (higher = more recent), ordered by stamp (oldest first).
        self.stamps_: list[dict[int, int]] = []
        self.capacity_: list[int] = []
        self.max_capacity_: list[int] = []
        self.checkpoints_: list[deque[tuple[float, int]]] = []  # per instance: (touch time, last stamp given)
        # Without `age_out` (no TTL) nothing reads the checkpoints: one tuple per dispatch kept forever (~100 MB
        # per million requests in a gateway). track_age=False keeps none.
        self.track_age = track_age
        self.clock_ = 0
        self.version_ = 0  # bumped on every change, so callers can cache a lookup
        self.evicted_ = 0
        self.resize(num_instances, capacity_blocks)

    # ---- shape -------------------------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return len(self.stamps_)

    def resize(self, n: int, capacity_blocks: int | None = None) -> None:
        """Grow to `n` instances; new ones get `capacity_blocks` (default: the last instance's)."""
        while len(self.stamps_) < n:
            cap = capacity_blocks or (self.max_capacity_[-1] if self.max_capacity_ else 1)
            self.stamps_.append({})
            self.capacity_.append(cap)
            self.max_capacity_.append(cap)
            self.checkpoints_.append(deque())

    def set_capacity(self, instance: int, blocks: int) -> None:
        """Change one instance's capacity (e.g. shrink it when the engine reports fewer hits than predicted)."""
        self.capacity_[instance] = max(1, int(blocks))
        self._maybe_evict(instance, force=True)

    def __len__(self) -> int:
        """Distinct hashes indexed (over all instances)."""
        return len(self.owners_)

    def blocks(self, instance: int) -> int:
        return len(self.stamps_[instance])

    # ---- lookups -----------------------------------------------------------------------------------------
    def _levels(self, hashes: Sequence[int]) -> Iterator[tuple[int, int]]:
        """(bitmask of instances whose match ends here, depth) along the chain, deepest last."""
        total = len(hashes)
        if not total:
            return
        get = self.owners_.get
        mask = get(hashes[0], 0)
        lo = 0
        while mask:
            # Positions lo.. whose owner set equals `mask` are contiguous (owner sets only shrink): find the
            # last one by binary search.
            a, b = lo, total - 1
            while a < b:
                mid = (a + b + 1) >> 1
                if get(hashes[mid], 0) == mask:
                    a = mid
                else:
                    b = mid - 1
            nxt = get(hashes[a + 1], 0) & mask if a + 1 < total else 0
            yield mask & ~nxt, a + 1
            mask = nxt
            lo = a + 1

    def match(self, hashes: Sequence[int]) -> list[int]:
        """Leading blocks of `hashes` each instance holds (longest prefix match, per instance)."""
        out = [0] * len(self.stamps_)
        for gone, depth in self._levels(hashes):
            while gone:
                low = gone & -gone
                out[low.bit_length() - 1] = depth
                gone ^= low
        return out

    def match_array(self, hashes: Sequence[int], n: int | None = None) -> np.ndarray:
        """`match` as a numpy array of length `n` (default: instances indexed), all owners in one pass: the
        instances whose match ends at the same depth form one bitmask, unpacked at C speed when large."""
        n = len(self.stamps_) if n is None else n
        out = np.zeros(n, np.int64)
        nbytes = (max(n, len(self.stamps_)) + 7) // 8
        for gone, depth in self._levels(hashes):
            if gone.bit_count() > 8:
                bits = np.unpackbits(np.frombuffer(gone.to_bytes(nbytes, "little"), np.uint8), bitorder="little")
                out[bits[:n].astype(bool)] = depth
            else:
                while gone:
                    low = gone & -gone
                    out[low.bit_length() - 1] = depth
                    gone ^= low
        return out

    def match_instance(self, instance: int, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` that `instance` holds."""
        d = self.stamps_[instance]
        total = len(hashes)
        if not total or hashes[0] not in d:
            return 0
        a, b = 0, total - 1
        while a < b:
            mid = (a + b + 1) >> 1
            if hashes[mid] in d:
                a = mid
            else:
                b = mid - 1
        return a + 1

    def longest(self, hashes: Sequence[int]) -> int:
        """Deepest leading block of `hashes` any instance holds."""
        get = self.owners_.get
        total = len(hashes)
        if not total or not get(hashes[0], 0):
            return 0
        a, b = 0, total - 1
        while a < b:
            mid = (a + b + 1) >> 1
            if get(hashes[mid], 0):
                a = mid
            else:
                b = mid - 1
        return a + 1

    # ---- updates -----------------------------------------------------------------------------------------
    def touch(self, instance: int, hashes: Sequence[int], now: float) -> None:
        """`instance` now holds the chain `hashes` (a request was dispatched there); refresh its recency."""
        total = len(hashes)
        if not total:
            return
        if instance >= len(self.stamps_):
            self.resize(instance + 1)
        d = self.stamps_[instance]
        have = self.match_instance(instance, hashes)
        # Head gets the highest stamp (and the most recent place): LRU drops the tail of a chain first, keeping
        # every set prefix-closed. Blocks past `have` are not held (prefix-closed), so they are plain inserts.
        stamp = self.clock_
        for h in reversed(hashes[have:]):
            stamp += 1
            d[h] = stamp
        for h in reversed(hashes[:have]):  # to the recent end: a plain dict keeps insertion order
            stamp += 1
            del d[h]
            d[h] = stamp
        self.clock_ = stamp
        if have < total:
            bit = 1 << instance
            owners = self.owners_
            get = owners.get
            for h in hashes[have:]:
                owners[h] = get(h, 0) | bit
        if self.track_age:
            self.checkpoints_[instance].append((now, self.clock_))
        self.version_ += 1
        self._maybe_evict(instance)

    def age_out(self, now: float, ttl: float) -> int:
        """Forget blocks not touched in the last `ttl` seconds; returns how many (instance, block) pairs."""
        cutoff = now - ttl
        dropped = 0
        for i, cps in enumerate(self.checkpoints_):
            last = None
            while cps and cps[0][0] < cutoff:
                last = cps.popleft()[1]
            if last is not None:
                dropped += self._evict_upto(i, last)
        return dropped

    def clear_instance(self, instance: int) -> None:
        """The instance restarted (or its cache was reset): it holds nothing."""
        self._drop(instance, list(self.stamps_[instance]))
        self.checkpoints_[instance].clear()

    # ---- internals ---------------------------------------------------------------------------------------
    def _maybe_evict(self, instance: int, force: bool = False) -> None:
        d = self.stamps_[instance]
        cap = self.capacity_[instance]
        size = len(d)
        if size <= cap or (not force and size <= cap + int(cap * self.slack)):
            return
        victims = list(islice(d, size - cap))  # the oldest
        for h in victims:
            del d[h]
        self._drop(instance, victims, popped=True)

    def _evict_upto(self, instance: int, stamp: int) -> int:
        """Drop the blocks of `instance` stamped `stamp` or earlier (they sit at the old end)."""
        d = self.stamps_[instance]
        victims = list(takewhile(lambda h: d[h] <= stamp, d))
        for h in victims:
            del d[h]
        self._drop(instance, victims, popped=True)
        return len(victims)

    def _drop(self, instance: int, victims: Sequence[int], popped: bool = False) -> None:
        """Remove `victims` from `instance` (already popped from its stamps if `popped`) and from the owners."""
        if not victims:
            return
        d = self.stamps_[instance]
        owners = self.owners_
        keep = ~(1 << instance)
        for h in victims:
            if not popped:
                del d[h]
            m = owners[h] & keep
            if m:
                owners[h] = m
            else:
                del owners[h]
        self.evicted_ += len(victims)
        self.version_ += 1
