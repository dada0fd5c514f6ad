"""Paged KV cache with automatic prefix caching, in the manner of vLLM v1's KVCacheManager and BlockPool.

Blocks of `block_size` tokens. A full prompt block whose content is known (a chained hash from
`Request.block_hashes`) is *cacheable*: once allocated it is registered under its hash, and when no request
references it any more it stays in the cache until its space is needed. Every other block (partial tail,
generated tokens, prompts that share nothing) is *anonymous*: only its count matters, so the simulator tracks
it as an integer and never touches per-block objects for it. That is what keeps 1M-request runs fast while
prefix hits stay exact at block granularity.

Free blocks form one queue, as vLLM's free block queue: allocation takes blocks from its front (evicting a
cached block it takes); a freed request puts its blocks without a hash at the front (reused first) and its
hashed ones at the back, tail block first. Runs of anonymous blocks sit in the queue as one entry with a
count, so a cached block is evicted exactly when vLLM would evict it. Two requests that compute the same block concurrently
both register it (vLLM keeps every copy; a lookup takes the oldest one still cached).

Deliberate simplification (documented in docs/architecture.md): generated tokens are registered only at
preemption, or at finish when the workload names the answer's hashes (`Request.output_hashes`); vLLM hashes
every full block, but no other request can hit a block of generated tokens it does not share.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import count

from llmsched.core.types import Request

Key = int | tuple[int, int]  # a cached block: its hash, or (hash, serial) for a second copy of one


class _Run:
    """A run of anonymous free blocks in the free queue (its length is the queue entry's value)."""

    __slots__ = ()


class KVCache:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = enable_prefix_caching
        self._refs: dict[Key, int] = {}  # cached block -> reference count
        self._dups: dict[int, list[tuple[int, int]]] = {}  # hash -> later copies (the first is keyed by the hash)
        self._serial = count()
        # The free queue, front first: `_front` anonymous blocks, then cached keys (value None) and anonymous
        # runs (value = length). The front run is a plain counter: the common allocation is one subtraction.
        self._front = num_blocks
        self._queue: OrderedDict[Key | _Run, int | None] = OrderedDict()
        self.num_used = 0  # blocks referenced by requests (anonymous + cached with refs)
        self.queries = 0  # prompt tokens looked up (vllm:prefix_cache_queries_total)
        self.hits = 0  # prompt tokens found (vllm:prefix_cache_hits_total)
        self.evictions = 0

    # -- capacity -------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        """Blocks a request could get now: empty ones plus evictable cached ones."""
        return self.num_blocks - self.num_used

    @property
    def usage(self) -> float:
        return self.num_used / self.num_blocks

    @property
    def num_cached(self) -> int:
        return len(self._refs)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # -- prefix lookup ---------------------------------------------------------------------------------
    def _key(self, h: int) -> Key | None:
        """The cached copy of hash h a lookup takes (the oldest), or None."""
        if h in self._refs:
            return h
        d = self._dups.get(h) if self._dups else None
        return d[0] if d else None

    def longest_hit(self, hashes: tuple[int, ...] | None, max_tokens: int) -> int:
        """Number of leading blocks of `hashes` registered in the cache, capped so at most `max_tokens`."""
        if not hashes or not self.prefix_caching:
            return 0
        limit = min(len(hashes), max_tokens // self.block_size)
        refs = self._refs
        dups = self._dups
        n = 0
        while n < limit and (hashes[n] in refs or (dups and hashes[n] in dups)):
            n += 1
        return n

    # -- allocation ------------------------------------------------------------------------------------
    def admit(self, req: Request, num_tokens: int, full_sequence_must_fit: bool = True) -> int | None:
        """First allocation of a (waiting) request: reuse its cached prefix and allocate up to `num_tokens`.

        Returns the number of cached prompt tokens, or None if the blocks do not fit (nothing changes).
        The cache hit is capped at `tokens_so_far - 1` as vLLM does, so at least one token is computed.
        With `full_sequence_must_fit` (vLLM's `scheduler_reserve_full_isl`, on by default) the blocks of the
        whole sequence so far must fit, not only those of the first chunk.
        """
        tokens_so_far = req.prompt_len + req.num_output
        hit_blocks = self.longest_hit(req.block_hashes, tokens_so_far - 1)
        hit_tokens = hit_blocks * self.block_size
        want = min(tokens_so_far, hit_tokens + num_tokens)
        total_blocks = self.blocks_for(want)
        hashes = req.block_hashes
        refs = self._refs
        if hit_blocks:
            keys = [self._key(hashes[i]) for i in range(hit_blocks)]  # type: ignore[index]
            # Hit blocks that are evictable now stop being free; referenced ones cost nothing.
            revived = sum(1 for k in keys if refs[k] == 0)  # type: ignore[index]
        else:
            keys = []
            revived = 0
        check = -(-tokens_so_far // self.block_size) if full_sequence_must_fit else total_blocks
        if check - hit_blocks + revived > self.num_blocks - self.num_used:
            return None
        queue = self._queue
        for k in keys:
            if refs[k] == 0:  # type: ignore[index]
                del queue[k]  # type: ignore[arg-type]
                self.num_used += 1
            refs[k] += 1  # type: ignore[index]
        req.kv_hashed = keys  # type: ignore[assignment]
        req.kv_anon = 0
        self.queries += req.prompt_len
        self.hits += hit_tokens
        self._grow(req, total_blocks - hit_blocks, want)
        return hit_tokens

    def extend(self, req: Request, num_tokens: int) -> bool:
        """Make room for `num_tokens` tokens of KV in total for a running request; False if it does not fit."""
        held = len(req.kv_hashed) + req.kv_anon  # type: ignore[arg-type]
        need = self.blocks_for(num_tokens) - held
        if need > self.num_free:
            return False
        self._grow(req, need, num_tokens)
        return True

    def alloc(self, n: int) -> None:
        """Take n anonymous blocks in bulk (the engine's decode set keeps their per-request split)."""
        if n <= 0:
            return
        if self._front >= n:
            self._front -= n
        else:
            self._take(n)
        self.num_used += n

    def _grow(self, req: Request, n: int, num_tokens: int) -> None:
        """Append n anonymous blocks to req, then register those of its blocks that are full of prompt.

        A block is registered under its hash once the tokens scheduled so far (`num_tokens`) fill it, as vLLM
        caches full blocks only (at allocation, so a request admitted later in the same step hits it).
        """
        if n > 0:
            if self._front >= n:
                self._front -= n
            else:
                self._take(n)
            self.num_used += n
            req.kv_anon += n
        self.promote(req, num_tokens)

    def promote(self, req: Request, num_tokens: int, hashes: tuple[int, ...] | None = None) -> None:
        """Register req's anonymous blocks that are full (of `num_tokens`) and have a known hash (from
        `hashes`, by default its prompt's `block_hashes`); a hash already cached gets a second copy."""
        if hashes is None:
            hashes = req.block_hashes
        if not hashes or not self.prefix_caching or not req.kv_anon:
            return
        held = req.kv_hashed
        assert held is not None
        refs = self._refs
        start = len(held)
        stop = min(len(hashes), num_tokens // self.block_size, start + req.kv_anon)
        for i in range(start, stop):
            h = hashes[i]
            if h in refs or h in self._dups:
                k: Key = (h, next(self._serial))
                self._dups.setdefault(h, []).append(k)  # type: ignore[arg-type]
            else:
                k = h
            refs[k] = 1
            held.append(k)  # type: ignore[arg-type]
        if stop > start:
            req.kv_anon -= stop - start

    def _forget(self, k: Key) -> None:
        del self._refs[k]
        if type(k) is tuple:
            d = self._dups[k[0]]
            d.remove(k)
            if not d:
                del self._dups[k[0]]

    def _take(self, n: int) -> None:
        """Take n blocks from the front of the free queue, evicting the cached ones among them (callers
        checked num_free >= n)."""
        f = min(self._front, n)
        self._front -= f
        n -= f
        q = self._queue
        while n > 0:
            k = next(iter(q))
            v = q[k]
            if v is None:
                del q[k]
                self._forget(k)  # type: ignore[arg-type]
                self.evictions += 1
                n -= 1
            elif v > n:
                q[k] = v - n
                return
            else:
                del q[k]
                n -= v

    def _append_anon(self, n: int) -> None:
        q = self._queue
        if not q:
            self._front += n  # nothing behind the front run: it is the back too
            return
        last = next(reversed(q))
        if type(last) is _Run:
            q[last] += n  # type: ignore[operator]
        else:
            q[_Run()] = n

    def _prepend_anon(self, n: int) -> None:
        self._front += n

    def free(self, req: Request, computed: int = 0) -> None:
        """Release all of req's blocks, as vLLM's block pool does: blocks without a hash go to the front of the
        free queue (reused first), hashed ones to the back, tail block first, and stay cached until they reach
        the front. `computed`: the request's tokens in KV; vLLM hashes each of their full blocks, so full
        anonymous blocks (generated tokens nobody else can hit) go to the back too."""
        held = req.kv_hashed
        if held is None:
            return
        refs = self._refs
        q = self._queue
        anon = req.kv_anon
        freed = anon
        if anon:
            private = min(anon, computed // self.block_size - len(held)) if self.prefix_caching else 0
            if private > 0:
                if anon > private:
                    self._prepend_anon(anon - private)
                self._append_anon(private)
            else:
                self._prepend_anon(anon)
        for h in reversed(held):
            c = refs[h] - 1
            refs[h] = c
            if c == 0:
                q[h] = None
                freed += 1
        self.num_used -= freed
        req.kv_hashed = None
        req.kv_anon = 0

    def reset_prefix_cache(self) -> None:
        """Drop every unreferenced cached block (vLLM's /reset_prefix_cache); their space stays free."""
        old = self._queue
        self._queue = OrderedDict()
        for k, v in old.items():
            if v is None:
                self._forget(k)  # type: ignore[arg-type]
                self._append_anon(1)
            else:
                self._append_anon(v)
