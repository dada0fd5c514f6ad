"""A deterministic stand-in tokenizer for the emulator and the gateway (no model files, no network).

What it must preserve of a real tokenizer is what scheduling depends on: lengths and shared prefixes.
- Length: one token per `width` UTF-8 bytes (default 4), about what BPE tokenizers give on English text
  (~4 characters a token), so prompt lengths and KV footprints are realistic.
- Prefix stability: token i depends only on bytes [i*width, (i+1)*width), so two texts with a common prefix of
  c bytes share their first c // width token ids, hence their first `c // (width * block_size)` chained block
  hashes (`core.hashing.token_block_hashes`): equal text prefixes give equal cached blocks, in the emulator's
  prefix cache and in a router's prefix index alike.
- Speed: the bytes are viewed as one unsigned-integer array and mixed with a vectorised integer hash (the
  murmur3 finaliser) in numpy, so encoding runs at C speed (~1 GB/s) with no Python loop over tokens.

Token ids lie in [0, vocab_size). Encoding is one-way (ids are hashes); `decode` is meant for generated ids,
which map to words of a fixed English word list, so generated text is synthetic but deterministic.
The chat template is Llama-3's layout (header / content / end-of-turn markers), so a conversation that grows
by appending messages keeps its earlier text, and with it its earlier tokens and cached blocks, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from llmsched.core.hashing import token_block_hashes

_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}

# Common English words, the pieces generated token ids decode to (each with a leading space).
_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will more other its may "
    "time some what them into only could new these two over first any then most also after did many "
    "before must through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between both life "
    "being under never day same another know while last might great old year off come since against go "
    "came right used take three small large next early young important few public bad sure able model "
    "token cache batch queue server request engine router prefix block memory layer expert latency"
)
_WORDS = tuple(" " + w for w in _WORD_TEXT.split())


def _mix32(x: np.ndarray) -> np.ndarray:
    """murmur3's 32-bit finaliser: a bijection of uint32 with good avalanche (every input bit moves ids)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> np.uint32(13))
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> np.uint32(16))


class StandInTokenizer:
    """Fixed-width byte-chunk tokenizer; see the module docstring for what it preserves and why.

    Args:
        width: bytes per token (1, 2 or 4; 4 matches English BPE's ~4 characters a token).
        vocab_size: ids are reduced into [0, vocab_size) (default: Llama-3's 128,256).
    """

    def __init__(self, width: int = 4, vocab_size: int = 128_256) -> None:
        if width not in (1, 2, 4):
            raise ValueError(f"tokenizer width must be 1, 2 or 4 bytes, got {width}")
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        self.width = width
        self.vocab_size = vocab_size
        self._dtype = _DTYPES[width]

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of `text` as a uint32 array (the fast path; `encode` converts to a list)."""
        data = text.encode("utf-8", errors="surrogatepass")
        pad = -len(data) % self.width
        if pad:
            # Pad with 0xFF, a byte that never occurs in UTF-8, so a text and the text plus NUL bytes differ.
            data += b"\xff" * pad
        chunks = np.frombuffer(data, dtype=self._dtype).astype(np.uint32)
        ids = _mix32(chunks)
        return ids % np.uint32(self.vocab_size)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def count(self, text: str) -> int:
        """Number of tokens of `text` without building them."""
        return -(-len(text.encode("utf-8", errors="surrogatepass")) // self.width)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of generated ids (a word each); not the inverse of `encode`, whose ids are hashes."""
        words = _WORDS
        n = len(words)
        return "".join([words[i % n] for i in ids])

    def token_texts(self, ids: Iterable[int]) -> list[str]:
        """The text of each id on its own (one streamed chunk per token)."""
        words = _WORDS
        n = len(words)
        return [words[i % n] for i in ids]

    def generated_ids(self, key: int, start: int, count: int) -> list[int]:
        """Ids of output tokens [start, start+count) of the generation keyed by `key` (same key, same text).

        Python's hash of a tuple of ints is stable across processes, so the output is reproducible.
        """
        v = self.vocab_size
        return [hash((key, k)) % v for k in range(start, start + count)]

    def block_hashes(self, ids: Sequence[int] | np.ndarray, block_size: int) -> tuple[int, ...]:
        """Chained hashes of the full blocks of `ids` (the engine's and routers' notion of a prefix)."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        return token_block_hashes(ids, block_size)

    # --- chat template -------------------------------------------------------------------------------

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> str:
        """One prompt string for a list of OpenAI chat messages (Llama-3 layout).

        Raises:
            ValueError: a message is not an object with a string `role` and string or text-parts `content`.
        """
        parts = ["<|begin_of_text|>"]
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping):
                raise ValueError(f"messages[{i}] must be an object, got {type(m).__name__}")
            role = m.get("role")
            if not isinstance(role, str) or not role:
                raise ValueError(f"messages[{i}].role must be a non-empty string")
            parts.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
            parts.append(message_text(m.get("content"), f"messages[{i}].content"))
            parts.append("<|eot_id|>")
        if add_generation_prompt:
            parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
        return "".join(parts)


def message_text(content: object, where: str = "content") -> str:
    """Text of a chat message's content: a string, None (tool-call turns), or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for j, p in enumerate(content):
            if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str):
                out.append(p["text"])
            elif isinstance(p, str):
                out.append(p)
            else:
                raise ValueError(f"{where}[{j}] must be a text part {{'type': 'text', 'text': ...}}")
        return "".join(out)
    raise ValueError(f"{where} must be a string or a list of text parts, got {type(content).__name__}")


DEFAULT_TOKENIZER = StandInTokenizer()
