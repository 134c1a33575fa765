"""The mock's generated text: deterministic, exactly counted, cut at max_tokens."""

from __future__ import annotations

import json
import random

import pytest
from openai.types.chat import ChatCompletion

from llm_mock_server.completion import (
    MAX_TOKENS,
    MIN_TOKENS,
    completion_json,
    generate,
    request_digest,
    usage,
    usage_json,
)
from llm_mock_server.counting import CachedTokenCounter
from ratelimit.tokens import TokenCounter

MODELS = ["gpt-4o-mini", "gpt-4", "gpt-3.5-turbo", "gpt-4.1-mini", "some-future-model"]


def _digest(text: str, seed: int = 0, model: str = "gpt-4o-mini") -> bytes:
    return request_digest(seed, model, [{"role": "user", "content": text}], None)


@pytest.mark.parametrize("model", MODELS)
def test_token_count_of_generated_text_is_what_tiktoken_counts(model: str) -> None:
    counter = TokenCounter()
    rng = random.Random(7)
    for _ in range(60):
        digest = _digest(str(rng.random()), model=model)
        limit = rng.choice([None, 1, 2, 3, 17, 64, 500])
        choice = generate(digest, rng.randrange(3), limit, model)
        assert choice.tokens == counter.count_text(choice.text, model)
        assert choice.tokens == len(choice.pieces)
        if limit is not None:
            assert choice.tokens <= limit


def test_length_follows_from_the_request_within_bounds() -> None:
    lengths = {generate(_digest(f"question {i}"), 0, None, "gpt-4o-mini").tokens for i in range(50)}
    assert all(MIN_TOKENS <= n <= MAX_TOKENS for n in lengths)
    assert len(lengths) > 10  # the length varies with the request


def test_same_request_same_text_other_request_other_text() -> None:
    a = generate(_digest("hello"), 0, None, "gpt-4o-mini")
    generate.cache_clear()
    assert generate(_digest("hello"), 0, None, "gpt-4o-mini") == a
    assert generate(_digest("hello!"), 0, None, "gpt-4o-mini").text != a.text
    assert generate(_digest("hello", seed=1), 0, None, "gpt-4o-mini").text != a.text
    assert generate(_digest("hello"), 1, None, "gpt-4o-mini").text != a.text


def test_finish_reason_is_length_only_when_max_tokens_binds() -> None:
    full = generate(_digest("finish"), 0, None, "gpt-4o-mini")
    assert full.finish_reason == "stop"
    assert generate(_digest("finish"), 0, full.tokens, "gpt-4o-mini").finish_reason == "stop"
    cut = generate(_digest("finish"), 0, full.tokens - 1, "gpt-4o-mini")
    assert cut.finish_reason == "length"
    assert cut.tokens == full.tokens - 1
    assert full.text.startswith(cut.text)


def test_cached_counter_counts_like_the_shared_counter() -> None:
    plain, cached = TokenCounter(), CachedTokenCounter()
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Zähle die Tokens, bitte: 12345 🙂", "name": "bob"},
        {"role": "user", "content": [{"type": "text", "text": "part"}, {"type": "image_url"}]},
    ]
    for model in MODELS:
        for _ in range(2):  # the second round is served from the cache
            assert cached.count_messages(messages, model) == plain.count_messages(messages, model)


def test_completion_json_is_a_valid_chat_completion() -> None:
    choices = [generate(_digest("json"), i, 9, "gpt-4o-mini") for i in range(2)]
    raw = completion_json("chatcmpl-abc", 'odd"model', choices, prompt_tokens=11)
    reply = ChatCompletion.model_validate(json.loads(raw))
    assert reply.id == "chatcmpl-abc"
    assert reply.model == 'odd"model'
    assert [c.message.content for c in reply.choices] == [c.text for c in choices]
    assert [c.finish_reason for c in reply.choices] == [c.finish_reason for c in choices]
    assert reply.usage is not None
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 18, 29)


def test_usage_json_is_the_usage_object() -> None:
    assert json.loads(usage_json(12, 30)) == usage(12, 30)
