"""The router's approximate view of which prompt prefixes each instance holds in its KV cache.

A router cannot see an engine's cache; like SGLang's and llm-d's routers it remembers what it sent where. The
index keys blocks by their chained hash (`Request.block_hashes`): holding block k implies having held blocks
0..k-1, so one hash names a whole prefix, and two chains agree up to depth k iff their hashes at k agree.

Layout: a radix tree whose nodes are runs of chained hashes (a node splits only where two chains part), so a
lookup or a touch costs a few dict lookups and binary searches per *node* on the request's path, and a new run
is stored as one tuple slice: per-block work is C-speed slicing, not a Python dict operation per block (which
is memory-bound, ~0.4 us a block on a large index: most of a gateway's routing CPU for 50 KiB prompts).

Per node and instance: whether it holds the whole run (`full`, a bitmask) or its first k blocks (`part`), and
the LRU stamp of the run's head for that instance (`top`); block j of the run has stamp top - j. Touching a
chain of T blocks at clock c stamps its block at depth d with c + T - d, the head highest, so LRU eviction and
time-based ageing always drop the tail of a chain first (vLLM's free queue does the same) and every instance's
set stays prefix-closed. The oldest block of an instance is then the deepest block of one of its leaves (nodes
it holds with no child it holds), and leaves of distinct touches have disjoint stamp ranges: a heap of leaves
per instance, keyed by their deepest stamp (stale entries dropped when popped), evicts block by block in
exactly the order of a per-block LRU list, at O(log) per leaf instead of O(1) per block.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator, Sequence
from itertools import count
from types import MappingProxyType
from typing import Any

import numpy as np

# Shared by every node until it needs a map of its own: most nodes are leaves held whole (a request's unique
# tail), and three empty dicts each were ~200 of a leaf's ~900 bytes. Read-only, so a missed allocation raises.
_EMPTY: Any = MappingProxyType({})


class _Node:
    """A run of chained hashes starting at depth `start`, and who holds how much of it."""

    __slots__ = ("keys", "start", "parent", "children", "full", "part", "top", "kids")

    def __init__(self, keys: tuple[int, ...], start: int, parent: _Node | None) -> None:
        self.keys = keys
        self.start = start
        self.parent = parent
        self.children: dict[int, _Node] = _EMPTY  # first hash of the child's run -> child
        self.full = 0  # bitmask of instances holding the whole run
        self.part: dict[int, int] = _EMPTY  # instance -> leading blocks held (0 < k < len(keys))
        self.top: dict[int, int] = {}  # instance -> stamp of keys[0] there
        self.kids: dict[int, int] = _EMPTY  # instance -> children it holds (absent: none, a leaf for it)

    def held(self, instance: int) -> int:
        if self.full >> instance & 1:
            return len(self.keys)
        return self.part.get(instance, 0)

    def most(self) -> int:
        """Leading blocks held by anyone."""
        return len(self.keys) if self.full else max(self.part.values(), default=0)


def _matched(node: _Node, hashes: Sequence[int], total: int) -> int:
    """Leading keys of `node` that `hashes` agrees with (at least 1: it was reached by its first hash).
    Chained hashes: agreement at one depth implies agreement at every shallower one, so a binary search."""
    keys, s = node.keys, node.start
    end = min(len(keys), total - s)
    if keys[end - 1] == hashes[s + end - 1]:
        return end
    a, b = 1, end - 1
    while a < b:
        mid = (a + b + 1) >> 1
        if keys[mid - 1] == hashes[s + mid - 1]:
            a = mid
        else:
            b = mid - 1
    return a


class PrefixIndex:
    """Per-instance LRU sets of chained block hashes.

    Args:
        num_instances: instances indexed (grow with `resize`).
        capacity_blocks: most blocks remembered per instance (an engine's `num_total_blocks` is the natural
            value: the engine cannot hold more).
        slack: fraction of capacity allowed above it before eviction brings it back to capacity (0: evict as
            blocks come in, the smoothest latency).
        track_age: keep the (time, stamp) checkpoints `age_out` needs; without ageing nothing reads them (one
            tuple per touch, kept forever: ~100 MB per million requests in a gateway).
    """

    def __init__(self, num_instances: int, capacity_blocks: int, slack: float = 0.0, track_age: bool = True) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        if slack < 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        self.slack = slack
        self.roots_: dict[int, _Node] = {}  # first hash of a chain -> the node holding its head
        self.size_: list[int] = []  # blocks held per instance
        self.leaves_: list[list[tuple[int, int, _Node]]] = []  # per instance: heap of (deepest stamp, seq, leaf)
        self.heap_floor_: list[int] = []  # heap length after its last compaction
        self.capacity_: list[int] = []
        self.max_capacity_: list[int] = []
        self.checkpoints_: list[deque[tuple[float, int]]] = []  # per instance: (touch time, last stamp given)
        self.track_age = track_age
        self.clock_ = 0
        self.version_ = 0  # bumped on every change, so callers can cache a lookup
        self.evicted_ = 0
        self._seq = count()
        self.resize(num_instances, capacity_blocks)

    # ---- shape -------------------------------------------------------------------------------------------
    @property
    def num_instances(self) -> int:
        return len(self.size_)

    def resize(self, n: int, capacity_blocks: int | None = None) -> None:
        """Grow to `n` instances; new ones get `capacity_blocks` (default: the last instance's)."""
        while len(self.size_) < n:
            cap = capacity_blocks or (self.max_capacity_[-1] if self.max_capacity_ else 1)
            self.size_.append(0)
            self.leaves_.append([])
            self.heap_floor_.append(0)
            self.capacity_.append(cap)
            self.max_capacity_.append(cap)
            self.checkpoints_.append(deque())

    def set_capacity(self, instance: int, blocks: int) -> None:
        """Change one instance's capacity (e.g. shrink it when the engine reports fewer hits than predicted)."""
        self.capacity_[instance] = max(1, int(blocks))
        self._maybe_evict(instance, force=True)

    def __len__(self) -> int:
        """Distinct hashes indexed (over all instances)."""
        return sum(node.most() for node in self._nodes())

    def blocks(self, instance: int) -> int:
        return self.size_[instance]

    def held(self, instance: int) -> dict[int, int]:
        """Every block `instance` holds, hash -> LRU stamp (higher = more recent): for checks, O(index)."""
        out: dict[int, int] = {}
        for node in self._nodes():
            k = node.held(instance)
            if k:
                top = node.top[instance]
                out.update(zip(node.keys[:k], range(top, top - k, -1), strict=True))
        return out

    def _nodes(self) -> Iterator[_Node]:
        stack = list(self.roots_.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    # ---- lookups -----------------------------------------------------------------------------------------
    def _path(self, hashes: Sequence[int]) -> Iterator[tuple[_Node, int]]:
        """(node, keys of it matched) along `hashes`, root first; only the last may be matched partly."""
        total = len(hashes)
        node = self.roots_.get(hashes[0]) if total else None
        while node is not None:
            m = _matched(node, hashes, total)
            yield node, m
            nxt = node.start + m
            if m < len(node.keys) or nxt >= total:
                return
            node = node.children.get(hashes[nxt])

    def match(self, hashes: Sequence[int]) -> list[int]:
        """Leading blocks of `hashes` each instance holds (longest prefix match, per instance)."""
        return self.match_array(hashes).tolist()

    def match_array(self, hashes: Sequence[int], n: int | None = None) -> np.ndarray:
        """`match` as a numpy array of length `n` (default: instances indexed), all owners in one pass down
        the path: deeper nodes overwrite, and an instance holding a deeper node holds every shallower one."""
        n = len(self.size_) if n is None else n
        out = np.zeros(n, np.int64)
        nbytes = (max(n, len(self.size_)) + 7) // 8
        for node, m in self._path(hashes):
            depth = node.start + m
            full = node.full
            if full.bit_count() > 8:
                bits = np.unpackbits(np.frombuffer(full.to_bytes(nbytes, "little"), np.uint8), bitorder="little")
                out[bits[:n].astype(bool)] = depth
            else:
                while full:
                    low = full & -full
                    out[low.bit_length() - 1] = depth
                    full ^= low
            for i, k in node.part.items():
                out[i] = node.start + min(k, m)
        return out

    def match_instance(self, instance: int, hashes: Sequence[int]) -> int:
        """Leading blocks of `hashes` that `instance` holds."""
        got = 0
        for node, m in self._path(hashes):
            k = node.held(instance)
            if not k:
                break
            got = node.start + min(k, m)
            if k < len(node.keys):
                break
        return got

    def longest(self, hashes: Sequence[int]) -> int:
        """Deepest leading block of `hashes` any instance holds."""
        got = 0
        for node, m in self._path(hashes):
            most = node.most()
            got = node.start + min(most, m)
            if most < len(node.keys):
                break
        return got

    # ---- updates -----------------------------------------------------------------------------------------
    def touch(self, instance: int, hashes: Sequence[int], now: float) -> None:
        """`instance` now holds the chain `hashes` (a request was dispatched there); refresh its recency."""
        total = len(hashes)
        if not total:
            return
        if instance >= len(self.size_):
            self.resize(instance + 1)
        hashes = tuple(hashes)
        bit = 1 << instance
        top = self.clock_ + total  # stamp of depth 0; depth d gets top - d
        grown = 0
        parent: _Node | None = None
        children = self.roots_
        s = 0
        while s < total:
            node = children.get(hashes[s])
            if node is None and parent is not None and not children and parent.full == bit and not parent.part:
                # A chain that grows past a leaf only this instance holds (the next turn of a conversation):
                # the run is extended, not given a child, so a conversation stays one node whatever its turns.
                parent.keys += hashes[s:]
                grown += total - s
                break
            if node is None:  # the rest of the chain is new
                node = _Node(hashes[s:], s, parent)
                if children is _EMPTY:
                    children = parent.children = {}  # type: ignore[union-attr]  # (roots_ is never _EMPTY)
                children[hashes[s]] = node
            else:
                m = _matched(node, hashes, total)
                if m < len(node.keys):
                    node = self._split(node, m)
            held = node.held(instance)
            if held < len(node.keys):
                grown += len(node.keys) - held
                if held:
                    del node.part[instance]
                else:
                    if parent is not None:
                        if parent.kids is _EMPTY:
                            parent.kids = {}
                        parent.kids[instance] = parent.kids.get(instance, 0) + 1
                node.full |= bit
            node.top[instance] = top - s
            parent = node
            children = node.children
            s += len(node.keys)
        assert parent is not None
        if instance not in parent.kids:  # the chain's last node is a leaf of this instance: the oldest of it
            self._push(instance, parent)
        self.clock_ = top
        self.size_[instance] += grown
        if self.track_age:
            self.checkpoints_[instance].append((now, top))
        self.version_ += 1
        self._maybe_evict(instance)

    def forget(self, instance: int, hashes: Sequence[int], keep: int = 0) -> int:
        """`instance` holds at most the first `keep` blocks of `hashes` (its engine reported dropping the rest,
        e.g. vLLM's KV events); deeper blocks of every chain through them go too, so its set stays a prefix.
        Returns how many blocks it dropped."""
        if instance >= len(self.size_):
            return 0
        before = self.size_[instance]
        for node, m in self._path(hashes):
            held = node.held(instance)
            if not held:
                break
            cut = keep - node.start  # blocks of this node kept
            if cut < min(held, m):
                self._drop_below(instance, node, max(0, cut))
                break
        return before - self.size_[instance]

    def age_out(self, now: float, ttl: float) -> int:
        """Forget blocks not touched in the last `ttl` seconds; returns how many (instance, block) pairs."""
        cutoff = now - ttl
        dropped = 0
        for i, cps in enumerate(self.checkpoints_):
            last = None
            while cps and cps[0][0] < cutoff:
                last = cps.popleft()[1]
            if last is not None:
                dropped += self._evict(i, stamp=last)
        return dropped

    def clear_instance(self, instance: int) -> None:
        """The instance restarted (or its cache was reset): it holds nothing."""
        if instance >= len(self.size_):
            return
        self._evict(instance)  # every block, leaf by leaf: O(what it held), not O(the index)
        self.leaves_[instance].clear()
        self.heap_floor_[instance] = 0
        self.checkpoints_[instance].clear()
        self.version_ += 1

    # ---- internals ---------------------------------------------------------------------------------------
    def _split(self, node: _Node, m: int) -> _Node:
        """Cut `node` after its first `m` keys; returns the new head node (the old object keeps the tail, its
        children and its heap entries, whose deepest stamps do not change)."""
        head = _Node(node.keys[:m], node.start, node.parent)
        (node.parent.children if node.parent is not None else self.roots_)[head.keys[0]] = head
        node.keys = node.keys[m:]
        node.start += m
        node.parent = head
        head.children = {node.keys[0]: node}
        head.kids = {}
        head.full = node.full
        head.top = dict(node.top)
        full = node.full
        while full:
            low = full & -full
            full ^= low
            i = low.bit_length() - 1
            head.kids[i] = 1
            node.top[i] -= m
        for i, k in list(node.part.items()):
            if k > m:
                head.full |= 1 << i
                head.kids[i] = 1
                node.part[i] = k - m
                node.top[i] -= m
            else:  # holds only (part of) the head now: the head is its leaf
                del node.part[i], node.top[i]
                if k == m:
                    head.full |= 1 << i
                else:
                    if head.part is _EMPTY:
                        head.part = {}
                    head.part[i] = k
                self._push(i, head)
        if not node.full and not node.part and not node.children:  # nobody held past the cut
            del head.children[node.keys[0]]
        return head

    def _push(self, instance: int, node: _Node) -> None:
        heap = self.leaves_[instance]
        heapq.heappush(heap, (node.top[instance] - node.held(instance) + 1, next(self._seq), node))
        if len(heap) > 2 * self.heap_floor_[instance] + 64:  # mostly stale entries: keep the live ones
            heap[:] = [e for e in heap if self._valid(instance, e)]  # in place: `_evict` holds this list
            heapq.heapify(heap)
            self.heap_floor_[instance] = len(heap)

    @staticmethod
    def _valid(instance: int, entry: tuple[int, int, _Node]) -> bool:
        stamp, _, node = entry
        k = node.held(instance)
        # A node freed from the tree was held by nobody and can never be held again: k == 0 covers it.
        return k > 0 and instance not in node.kids and node.top[instance] - k + 1 == stamp

    def _maybe_evict(self, instance: int, force: bool = False) -> None:
        size = self.size_[instance]
        cap = self.capacity_[instance]
        if size <= cap or (not force and size <= cap + int(cap * self.slack)):
            return
        self._evict(instance, blocks=size - cap)

    def _evict(self, instance: int, blocks: int = 1 << 62, stamp: int | None = None) -> int:
        """Drop the `blocks` oldest blocks of `instance`, or (with `stamp`) those stamped `stamp` or earlier."""
        heap = self.leaves_[instance]
        dropped = 0
        while dropped < blocks and heap:
            entry = heap[0]
            if not self._valid(instance, entry):
                heapq.heappop(heap)
                continue
            oldest, _, node = entry
            if stamp is not None and oldest > stamp:
                break
            heapq.heappop(heap)
            k = node.held(instance)
            top = node.top[instance]
            n = min(k, blocks - dropped)
            if stamp is not None:
                n = min(n, stamp - oldest + 1)  # blocks oldest .. stamp
            dropped += n
            if n < k:
                self._set_held(instance, node, k - n)
                heapq.heappush(heap, (top - (k - n) + 1, next(self._seq), node))
            else:
                self._release(instance, node)
        if dropped:
            self.size_[instance] -= dropped
            self.evicted_ += dropped
            self.version_ += 1
        return dropped

    def _set_held(self, instance: int, node: _Node, k: int) -> None:
        if k == len(node.keys):
            if instance in node.part:
                del node.part[instance]
            node.full |= 1 << instance
        else:
            node.full &= ~(1 << instance)
            if node.part is _EMPTY:
                node.part = {}
            node.part[instance] = k

    def _release(self, instance: int, node: _Node) -> None:
        """`instance` holds none of `node` (nor, by then, of its children); free what nobody holds."""
        node.full &= ~(1 << instance)
        if instance in node.part:
            del node.part[instance]
        del node.top[instance]
        parent = node.parent
        if parent is not None:
            left = parent.kids[instance] - 1
            if left:
                parent.kids[instance] = left
            else:
                del parent.kids[instance]
                self._push(instance, parent)  # now a leaf of this instance
        while node is not None and not node.full and not node.part and not node.children:
            parent = node.parent
            del (parent.children if parent is not None else self.roots_)[node.keys[0]]
            node = parent

    def _drop_below(self, instance: int, node: _Node, keep: int) -> None:
        """`instance` keeps only the first `keep` blocks of `node` and nothing below it."""
        stack = [c for c in node.children.values() if c.held(instance)]
        order: list[_Node] = []
        while stack:
            c = stack.pop()
            order.append(c)
            stack.extend(g for g in c.children.values() if g.held(instance))
        gone = 0
        for c in reversed(order):  # deepest first: a node is released after its children
            gone += c.held(instance)
            self._release(instance, c)
        held = node.held(instance)
        gone += held - keep
        if keep:
            self._set_held(instance, node, keep)
            self._push(instance, node)
        else:
            self._release(instance, node)
        self.size_[instance] -= gone
        self.evicted_ += gone
        self.version_ += 1
