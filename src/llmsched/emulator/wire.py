"""vLLM's OpenAI-compatible response bodies and SSE chunks, as bytes. No I/O.

Streaming sends one `data: {...}\\n\\n` event per token, as vLLM does, then `data: [DONE]\\n\\n`. A chunk
differs from the previous one only in its text, so each request renders a template once and a chunk is
`head + json(text) + tail`: a JSON dump of the whole object per token would dominate the emulator's CPU time.
Chat streams open with a chunk whose delta carries the role, and the last token's chunk carries the finish
reason; with `stream_options.include_usage` one more chunk with empty `choices` carries the usage.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from llmsched.gateway.openai_req import (
    CHAT_NULLS,
    CHOICE_NULLS,
    COMPLETION_CHOICE_NULLS,
    COMPLETION_NULLS,
    MESSAGE_NULLS,
)

_SENTINEL = "\x00llmsched-text\x00"
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "created_cache_tokens": None,
                                  "multimodal_tokens": None},
        "completion_tokens_details": None,
    }



def completion_body(
    rid: str, created: int, model: str, text: str, finish_reason: str | None, use: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason, "stop_reason": None,
             **COMPLETION_CHOICE_NULLS}
        ],
        "usage": use,
        **COMPLETION_NULLS,
    }


def chat_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, **MESSAGE_NULLS},  # vLLM drops an empty tool_calls
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        **CHOICE_NULLS,
    }


def chat_body(
    rid: str, created: int, model: str, text: str, finish_reason: str | None, use: dict[str, Any]
) -> dict[str, Any]:
    return chat_body_of(rid, created, model, [chat_choice(0, text, finish_reason)], use)


def chat_body_of(rid: str, created: int, model: str, choices: list[dict[str, Any]],
                 use: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": use,
        **CHAT_NULLS,
    }


def permission(created: int) -> dict[str, Any]:
    """The one permission entry vLLM lists with each model (its defaults)."""
    return {"id": f"modelperm-{secrets.token_hex(16)}", "object": "model_permission", "created": created,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False, "organization": "*",
            "group": None, "is_blocking": False}


def _split(obj: dict[str, Any]) -> tuple[bytes, bytes]:
    """`data: <obj>` around the sentinel text, as (head, tail) bytes."""
    s = "data: " + _dumps(obj) + "\n\n"
    head, tail = s.split(_dumps(_SENTINEL), 1)
    return head.encode(), tail.encode()


class ChunkEncoder:
    """SSE events of one streamed request."""

    __slots__ = ("chat", "rid", "created", "model", "_head", "_tail", "_last_head", "_last_tail")

    def __init__(self, chat: bool, rid: str, created: int, model: str) -> None:
        self.chat = chat
        self.rid = rid
        self.created = created
        self.model = model
        self._head, self._tail = _split(self._chunk(_SENTINEL, None))
        self._last_head, self._last_tail = _split(self._chunk(_SENTINEL, "length"))

    def _base(self) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model}

    def _chunk(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None,
                                      "finish_reason": finish_reason}  # fmt: skip
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason,
                      "stop_reason": None}  # fmt: skip
        return {**self._base(), "choices": [choice]}

    def first(self) -> bytes:
        """The opening chunk of a chat stream (role, empty content); nothing for completions."""
        if not self.chat:
            return b""
        c = {**self._base(), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]}  # fmt: skip
        return b"data: " + _dumps(c).encode() + b"\n\n"

    def tokens(self, texts: list[str], last_is_final: bool) -> bytes:
        """One event per token text; the last one carries finish_reason "length" when `last_is_final`."""
        head, tail = self._head, self._tail
        parts = [head + _dumps(t).encode() + tail for t in texts]
        if last_is_final and texts:
            parts[-1] = self._last_head + _dumps(texts[-1]).encode() + self._last_tail
        return b"".join(parts)

    def final(self, finish_reason: str) -> bytes:
        """A closing event with empty text (a stream that ends without a token of its own)."""
        return b"data: " + _dumps(self._chunk("", finish_reason)).encode() + b"\n\n"

    def usage(self, use: dict[str, Any]) -> bytes:
        return b"data: " + _dumps({**self._base(), "choices": [], "usage": use}).encode() + b"\n\n"

    @staticmethod
    def error(message: str, status: int = 500, err_type: str = "InternalServerError") -> bytes:
        body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
        return b"data: " + _dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def dumps(obj: Any) -> str:
    return _dumps(obj)
