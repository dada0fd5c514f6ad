"""OpenAI request bodies in, validated generation requests out; errors as vLLM reports them. No I/O.

vLLM answers a bad request with HTTP 400 and `{"error": {"message", "type": "BadRequestError", "param",
"code": 400}}`, an unknown model with 404 and type "NotFoundError". We check the same things a client can
trip on (types and ranges of the sampling fields, context length) and reject, with a message naming the field,
the features the emulator does not model (n > 1, logprobs, echo, batched prompts, suffix).
Accepted and ignored, because they change only the text and not the work: temperature, top_p, top_k, seed
(used only to key the synthetic text), stop, stop_token_ids, presence/frequency/repetition penalties,
ignore_eos, min_tokens, tools, response_format. Generation always runs to `max_tokens` ("length"). Ignored
fields are still type-checked (and min_tokens <= max_tokens), so a body vLLM answers 400 is a 400 here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llmsched.core.tokenizer import StandInTokenizer


class ApiError(Exception):
    """A request error with its HTTP status and OpenAI error fields."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, err_type: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.err_type = err_type or {400: "BadRequestError", 404: "NotFoundError"}.get(
            status, "InternalServerError"
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(slots=True)
class Limits:
    """What the server enforces on every request."""

    served_names: tuple[str, ...]
    max_model_len: int
    default_max_tokens: int
    aliases: tuple[str, ...] = ()
    """Further names of the base model (vLLM's `--served-model-name a b`): accepted, answered as `served_names[0]`."""


@dataclass(slots=True)
class GenRequest:
    """A validated generation request."""

    chat: bool
    model: str
    prompt_ids: list[int]
    max_tokens: int
    stream: bool
    include_usage: bool
    user: str | None
    seed: int | None
    priority: int


def check_model(body: Mapping[str, Any], limits: Limits) -> str:
    """The served name the request asks for: the first one if it names none or a base-model alias (as vLLM,
    whose responses name the first `--served-model-name`), else the adapter it names."""
    model = body.get("model")
    if model is None or (isinstance(model, str) and model in limits.aliases):
        return limits.served_names[0]
    if not isinstance(model, str) or model not in limits.served_names:
        raise ApiError(f"The model `{model}` does not exist.", 404, "model")
    return model


def _num(
    body: Mapping[str, Any], key: str, lo: float | None, hi: float | None, lo_open: bool = False
) -> None:
    v = body.get(key)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ApiError(f"{key} must be a number, got {type(v).__name__}.", param=key)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ApiError(f"{key} must be {'>' if lo_open else '>='} {lo}, got {v}.", param=key)
    if hi is not None and v > hi:
        raise ApiError(f"{key} must be <= {hi}, got {v}.", param=key)


def _int(body: Mapping[str, Any], key: str, lo: int | None = None) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ApiError(f"{key} must be an integer, got {type(v).__name__}.", param=key)
    if lo is not None and v < lo:
        raise ApiError(f"{key} must be at least {lo}, got {v}.", param=key)
    return v


def _bool(body: Mapping[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise ApiError(f"{key} must be a boolean, got {type(v).__name__}.", param=key)
    return v


def _stop(body: Mapping[str, Any]) -> None:
    """`stop` is a string or a list of strings; `stop_token_ids` a list of integers (vLLM's request model)."""
    v = body.get("stop")
    if v is not None and not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
        raise ApiError(f"stop must be a string or a list of strings, got {type(v).__name__}.", param="stop")
    v = body.get("stop_token_ids")
    if v is not None and not (
        isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ):
        raise ApiError(f"stop_token_ids must be a list of integers, got {type(v).__name__}.", param="stop_token_ids")


def _common(
    body: Mapping[str, Any], chat: bool
) -> tuple[int | None, bool, bool, str | None, int | None, int]:
    """Checks shared by both endpoints; returns (max_tokens, stream, include_usage, user, seed, priority)."""
    n = _int(body, "n", 1)
    if n is not None and n != 1:
        raise ApiError("n > 1 is not supported by the emulator.", param="n")
    _num(body, "temperature", 0.0, None)
    _num(body, "top_p", 0.0, 1.0, lo_open=True)
    _num(body, "presence_penalty", -2.0, 2.0)
    _num(body, "frequency_penalty", -2.0, 2.0)
    _num(body, "repetition_penalty", 0.0, None, lo_open=True)
    _int(body, "top_k")
    min_tokens = _int(body, "min_tokens", 0)
    _bool(body, "ignore_eos")
    _stop(body)
    max_tokens = _int(body, "max_tokens")
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens")
        key = "max_completion_tokens"
    else:
        key = "max_tokens"
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(f"{key} must be at least 1, got {max_tokens}.", param=key)
    if min_tokens is not None and max_tokens is not None and min_tokens > max_tokens:
        raise ApiError(f"min_tokens must be less than or equal to {key}={max_tokens}, got {min_tokens}.",
                       param="min_tokens")  # fmt: skip
    stream = _bool(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not stream:
            raise ApiError("Stream options can only be defined when `stream=True`.", param="stream_options")
        if not isinstance(opts, Mapping):
            raise ApiError("stream_options must be an object.", param="stream_options")
        include_usage = _bool(opts, "include_usage")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(f"user must be a string, got {type(user).__name__}.", param="user")
    seed = _int(body, "seed")
    priority = _int(body, "priority") or 0
    return max_tokens, stream, include_usage, user, seed, priority


def _finish(chat: bool, model: str, ids: list[int], body: Mapping[str, Any], limits: Limits) -> GenRequest:
    max_tokens, stream, include_usage, user, seed, priority = _common(body, chat)
    p = len(ids)
    if p == 0:
        raise ApiError("The prompt cannot be empty.", param="messages" if chat else "prompt")
    cap = limits.max_model_len
    if p >= cap:
        raise ApiError(
            f"This model's maximum context length is {cap} tokens. However, your request has {p} input tokens. "
            "Please reduce the length of the input.",
            param="messages" if chat else "prompt",
        )
    if max_tokens is None:
        max_tokens = min(limits.default_max_tokens, cap - p)
    elif p + max_tokens > cap:
        raise ApiError(
            f"This model's maximum context length is {cap} tokens. However, you requested {max_tokens} output "
            f"tokens and your prompt contains {p} input tokens, for a total of {p + max_tokens} tokens. Please "
            "reduce the length of the input or of max_tokens.",
            param="max_completion_tokens"
            if chat and body.get("max_completion_tokens") is not None
            else "max_tokens",
        )
    return GenRequest(chat, model, ids, max_tokens, stream, include_usage, user, seed, priority)


def _token_list(v: list[Any], tok: StandInTokenizer, param: str) -> list[int]:
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in v):
        raise ApiError(f"{param} must be a string or a list of token ids.", param=param)
    if any(t < 0 or t >= tok.vocab_size for t in v):
        raise ApiError(f"{param} has token ids outside [0, {tok.vocab_size}).", param=param)
    return list(v)


def prompt_ids(prompt: Any, tok: StandInTokenizer) -> list[int]:
    """Token ids of a completions `prompt`: a string, token ids, or a batch of exactly one of those."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return tok.encode(prompt)
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, str | list) for p in prompt):
            raise ApiError("Batched prompts (a list of several prompts) are not supported by the emulator.",
                           param="prompt")  # fmt: skip
        return _token_list(prompt, tok, "prompt")
    if prompt is None:
        raise ApiError("Field required: prompt.", param="prompt")
    raise ApiError(
        f"prompt must be a string or a list of token ids, got {type(prompt).__name__}.", param="prompt"
    )


def parse_completion(body: Any, tok: StandInTokenizer, limits: Limits) -> GenRequest:
    """A `/v1/completions` body; raises `ApiError`."""
    if not isinstance(body, Mapping):
        raise ApiError("The request body must be a JSON object.")
    model = check_model(body, limits)
    for key in ("echo",):
        if _bool(body, key):
            raise ApiError(f"{key} is not supported by the emulator.", param=key)
    if body.get("logprobs") is not None:
        raise ApiError("logprobs is not supported by the emulator.", param="logprobs")
    if body.get("suffix"):
        raise ApiError("suffix is not supported.", param="suffix")
    return _finish(False, model, prompt_ids(body.get("prompt"), tok), body, limits)


def chat_prompt(body: Mapping[str, Any], tok: StandInTokenizer) -> str:
    """The prompt text of a chat body's `messages` through the stand-in chat template."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of messages.", param="messages")
    add_gen = body.get("add_generation_prompt", True)
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=bool(add_gen))
    except ValueError as e:
        raise ApiError(str(e), param="messages") from None


def parse_chat(body: Any, tok: StandInTokenizer, limits: Limits) -> GenRequest:
    """A `/v1/chat/completions` body; raises `ApiError`."""
    if not isinstance(body, Mapping):
        raise ApiError("The request body must be a JSON object.")
    model = check_model(body, limits)
    if _bool(body, "logprobs"):
        raise ApiError("logprobs is not supported by the emulator.", param="logprobs")
    text = chat_prompt(body, tok)
    return _finish(True, model, tok.encode(text), body, limits)
