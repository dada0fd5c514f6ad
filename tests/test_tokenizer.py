"""The stand-in tokenizer keeps what scheduling depends on: lengths, shared prefixes, determinism."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmsched.core.hashing import token_block_hashes
from llmsched.core.tokenizer import StandInTokenizer, message_text

TOK = StandInTokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.text(max_size=300), st.text(max_size=300))
def test_equal_text_prefix_gives_equal_leading_tokens(prefix: str, a: str, b: str) -> None:
    ta, tb = TOK.encode(prefix + a), TOK.encode(prefix + b)
    k = len(prefix.encode("utf-8", errors="surrogatepass")) // TOK.width
    assert ta[:k] == tb[:k]
    # ... hence equal leading cached blocks.
    ha, hb = token_block_hashes(ta, 4), token_block_hashes(tb, 4)
    assert ha[: k // 4] == hb[: k // 4]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=500))
def test_length_is_bytes_over_width_and_ids_in_vocab(text: str) -> None:
    ids = TOK.encode(text)
    n = len(text.encode("utf-8", errors="surrogatepass"))
    assert len(ids) == -(-n // 4) == TOK.count(text)
    assert all(0 <= i < TOK.vocab_size for i in ids)


def test_english_is_about_four_characters_a_token() -> None:
    text = "The quick brown fox jumps over the lazy dog, and the scheduler batches it. " * 20
    assert len(text) / len(TOK.encode(text)) == pytest.approx(4.0, rel=0.05)


def test_different_texts_differ_and_padding_is_not_a_character() -> None:
    assert TOK.encode("abcd") != TOK.encode("abce")
    assert TOK.encode("ab") != TOK.encode("ab\x00\x00")
    assert len(set(TOK.encode("".join(chr(65 + i % 26) * 4 for i in range(26))))) == 26


def test_ids_are_the_same_in_another_process() -> None:
    """Token ids and generated text feed cache keys across processes (gateway and emulator)."""
    code = (
        "from llmsched.core.tokenizer import StandInTokenizer as T; t=T(); "
        "print(t.encode('hello world, prefix cache'), t.generated_ids(12345, 0, 5))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == f"{TOK.encode('hello world, prefix cache')} {TOK.generated_ids(12345, 0, 5)}"


def test_generated_text_is_deterministic_and_chunked() -> None:
    ids = TOK.generated_ids(7, 0, 10)
    assert ids == TOK.generated_ids(7, 0, 4) + TOK.generated_ids(7, 4, 6)
    assert ids != TOK.generated_ids(8, 0, 10)
    assert TOK.decode(ids) == "".join(TOK.token_texts(ids))
    assert len(TOK.decode(ids).split()) == 10


def test_chat_template_grows_by_appending() -> None:
    turn1 = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    turn2 = [*turn1, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "more"}]
    p1 = TOK.apply_chat_template(turn1, add_generation_prompt=False)
    p2 = TOK.apply_chat_template(turn2)
    assert p2.startswith(p1)
    assert TOK.apply_chat_template(turn1) == TOK.apply_chat_template(turn1)
    assert "assistant" in TOK.apply_chat_template(turn1)[len(p1) :]


def test_chat_content_parts_and_errors() -> None:
    assert message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert message_text(None) == ""
    with pytest.raises(ValueError, match=r"messages\[0\].role"):
        TOK.apply_chat_template([{"content": "x"}])
    with pytest.raises(ValueError, match="text part"):
        TOK.apply_chat_template([{"role": "user", "content": [{"type": "image_url"}]}])
    with pytest.raises(ValueError, match="must be an object"):
        TOK.apply_chat_template(["hello"])  # type: ignore[list-item]


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="width"):
        StandInTokenizer(width=3)
    with pytest.raises(ValueError, match="vocab_size"):
        StandInTokenizer(vocab_size=1)
