"""Block hashes for prompts that have no text: content is named by ids, and `core.hashing.chain` chains them.

Two sources of prefix identity:
- Mooncake-style `hash_ids`: each id names one 512-token block *and everything before it*. An engine block
  of `block_size` tokens is named by (id of the trace block holding its last token, its end offset inside
  that block), packed into one int `id * (src_block + 1) + offset`, so equal ids give equal engine-block
  hashes, and a block size that does not divide 512 still works. Only full engine blocks are hashed.
- Synthetic streams (`StreamHasher`): a prompt is a shared prefix (a system prompt) followed by a stream's
  own append-only tokens; a block is named by the segment holding its last token and its index.
All content keys are ints or tuples of ints, whose hashes are the same in every process.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmsched.core.hashing import ROOT, chain


class BlockIdExpander:
    """Expands trace block ids (`src_block` tokens each) into chained hashes of `block_size`-token blocks.

    Expansions are cached by (parent hash, id): a trace's shared prefixes are expanded once, and requests
    that share them share the very same hash objects (memory grows with distinct blocks, not references).
    """

    def __init__(self, block_size: int, src_block: int = 512, root: int = ROOT) -> None:
        if block_size < 1 or src_block < 1:
            raise ValueError("block sizes must be >= 1")
        self.block_size = block_size
        self.src_block = src_block
        self.root = root
        self._divides = src_block % block_size == 0
        self._cache: dict[tuple[int, int], tuple[int, ...]] = {}

    def expand(self, ids: Sequence[int], prompt_len: int) -> tuple[int, ...]:
        """Hashes of the full `block_size` blocks of a prompt of `prompt_len` tokens named by `ids`."""
        bs, sb = self.block_size, self.src_block
        n_full = min(prompt_len, len(ids) * sb) // bs
        if n_full == 0:
            return ()
        if not self._divides:
            keys = []
            for b in range(n_full):
                end = (b + 1) * bs
                k = (end - 1) // sb
                keys.append(ids[k] * (sb + 1) + end - k * sb)
            return chain(keys, self.root)
        per = sb // bs
        out: list[int] = []
        parent = self.root
        cache = self._cache
        for k in range((n_full + per - 1) // per):
            key = (parent, ids[k])
            sub = cache.get(key)
            if sub is None:
                base = ids[k] * (sb + 1)
                sub = chain(range(base + bs, base + sb + 1, bs), parent)
                cache[key] = sub
            out.extend(sub)
            parent = sub[-1]
        del out[n_full:]
        return tuple(out)


class BlockRef:
    """A request's block ids, expanded to hashes only when its `Request` is built (`Columns.iter_requests`).

    Shaping may drop most rows (limit, window); deferring the expansion makes that cheap.
    """

    __slots__ = ("expander", "ids", "prompt_len")

    def __init__(self, expander: BlockIdExpander, ids: Sequence[int], prompt_len: int) -> None:
        self.expander = expander
        self.ids = ids
        self.prompt_len = prompt_len

    def __call__(self) -> tuple[int, ...] | None:
        return self.expander.expand(self.ids, self.prompt_len) or None


class StreamHasher:
    """Hashes of append-only token streams that start with one of several shared prefixes.

    A stream's tokens are `prefix_len` tokens of its shared prefix, then its own tokens. Block b (tokens
    [b*bs, (b+1)*bs)) is named (0, prefix_key, b) when it lies inside the shared prefix, else
    (1, stream_key, b): a block that straddles the boundary holds the stream's own tokens. Hashes already
    computed for a stream are kept, so a turn that extends the context only hashes its new blocks.
    """

    def __init__(self, block_size: int, root: int = ROOT) -> None:
        self.block_size = block_size
        self.root = root
        self._prefix: dict[int, tuple[int, ...]] = {}
        self._streams: dict[int, list[int]] = {}

    def prefix_hashes(self, prefix_key: int, prefix_len: int) -> tuple[int, ...]:
        h = self._prefix.get(prefix_key)
        if h is None:
            h = chain(((0, prefix_key, b) for b in range(prefix_len // self.block_size)), self.root)
            self._prefix[prefix_key] = h
        return h

    def hashes(self, stream_key: int, prefix_key: int, prefix_len: int, prompt_len: int) -> tuple[int, ...]:
        """Full-block hashes of the first `prompt_len` tokens of a stream (prompt_len >= prefix_len)."""
        n_full = prompt_len // self.block_size
        known = self._streams.get(stream_key)
        if known is None:
            known = list(self.prefix_hashes(prefix_key, prefix_len))
            self._streams[stream_key] = known
        if len(known) < n_full:
            parent = known[-1] if known else self.root
            known.extend(chain(((1, stream_key, b) for b in range(len(known), n_full)), parent))
        return tuple(known[:n_full])

    def answer_hashes(self, stream_key: int, prompt_len: int, total_len: int) -> tuple[int, ...]:
        """Hashes of the full blocks after the prompt's, up to `total_len` tokens: the blocks the answer fills.

        The stream's next turn sends prompt + answer, so these are exactly the hashes its prompt will carry
        there (`hashes` must have been called for this stream first)."""
        known = self._streams[stream_key]
        n_full = total_len // self.block_size
        if len(known) < n_full:
            parent = known[-1] if known else self.root
            known.extend(chain(((1, stream_key, b) for b in range(len(known), n_full)), parent))
        return tuple(known[prompt_len // self.block_size : n_full])

    def forget(self, stream_key: int) -> None:
        """Drop a finished stream's hash list (the requests keep their tuples)."""
        self._streams.pop(stream_key, None)
