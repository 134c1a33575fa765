"""Token counting and cost rules, checked against published counts.

The expected figures come from OpenAI's cookbook notebook "How to count tokens with
tiktoken", whose counts were confirmed there against the API's ``usage.prompt_tokens``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import pytest
import tiktoken.load

from ratelimit import tokens
from ratelimit.cost import CostEstimator, CostRule
from ratelimit.tokens import TOKENS_PER_IMAGE, TokenCounter, encoding, encoding_name_for_model

COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.fixture
def fresh_encodings() -> Iterator[None]:
    """Encodings are cached per process: start and end the test with an empty cache."""
    encoding.cache_clear()
    yield
    encoding.cache_clear()


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4-0613", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_cookbook_chat_example(model: str, expected: int) -> None:
    assert TokenCounter().count_messages(COOKBOOK_MESSAGES, model) == expected


@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        ("cl100k_base", "tiktoken is great!", [83, 1609, 5963, 374, 2294, 0]),
        ("o200k_base", "tiktoken is great!", [83, 8251, 2488, 382, 2212, 0]),
        ("cl100k_base", "antidisestablishmentarianism", [519, 85342, 34500, 479, 8997, 2191]),
        ("o200k_base", "antidisestablishmentarianism", [493, 129901, 376, 160388, 21203, 2367]),
        ("cl100k_base", "2 + 2 = 4", [17, 489, 220, 17, 284, 220, 19]),
        ("o200k_base", "2 + 2 = 4", [17, 659, 220, 17, 314, 220, 19]),
        ("cl100k_base", "お誕生日おめでとう", [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699]),
        ("o200k_base", "お誕生日おめでとう", [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669]),
    ],
)
def test_encodings_match_the_cookbook(name: str, text: str, ids: list[int]) -> None:
    enc = encoding(name)
    assert enc is not None
    assert enc.encode(text) == ids


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("some-local-model", "o200k_base"),
    ],
)
def test_model_to_encoding(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected


def test_encodings_load_without_the_network(monkeypatch: pytest.MonkeyPatch, fresh_encodings: None) -> None:
    def no_download(*_args: object, **_kwargs: object) -> bytes:
        raise AssertionError("tiktoken tried to fetch an encoding file")

    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_download)
    monkeypatch.setattr(tiktoken.load, "read_file", no_download)
    assert TokenCounter().count_messages(COOKBOOK_MESSAGES, "gpt-4o") == 124
    assert TokenCounter().count_messages(COOKBOOK_MESSAGES, "gpt-4") == 129


def test_unavailable_encoding_falls_back_to_characters_and_says_so_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_encodings: None
) -> None:
    def broken(*_args: object, **_kwargs: object) -> dict[bytes, int]:
        raise OSError("packaged encoding missing")

    monkeypatch.setattr(tokens, "_packaged_bpe", broken)
    counter = TokenCounter()
    with caplog.at_level(logging.WARNING, logger="ratelimit.tokens"):
        assert counter.count_text("abcdefghij", "gpt-4o") == math.ceil(10 / 4)
        assert counter.count_text("abcd" * 25, "gpt-4o-mini") == 25
        assert counter.count_text("", "gpt-4o") == 0
    warnings = [r for r in caplog.records if "o200k_base" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "packaged encoding missing" in warnings[0].getMessage()


def test_unknown_encoding_name_is_an_estimate_too(
    caplog: pytest.LogCaptureFixture, fresh_encodings: None
) -> None:
    with caplog.at_level(logging.WARNING, logger="ratelimit.tokens"):
        assert encoding("no_such_base") is None
        assert encoding("no_such_base") is None
    assert sum("no_such_base" in r.getMessage() for r in caplog.records) == 1


def test_message_parts_names_images_and_tools() -> None:
    counter = TokenCounter()
    model = "gpt-4o"

    def text(s: str) -> int:
        return counter.count_text(s, model)

    plain = [{"role": "user", "content": "Describe this picture."}]
    assert counter.count_messages(plain, model) == 3 + 3 + text("user") + text("Describe this picture.")

    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe this picture."},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            ],
        }
    ]
    assert counter.count_messages(parts, model) == counter.count_messages(plain, model) + TOKENS_PER_IMAGE

    named = [{"role": "user", "name": "alice", "content": "hi"}]
    assert counter.count_messages(named, model) == 3 + 3 + text("user") + 1 + text("alice") + text("hi")

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    with_tools = counter.count_messages(plain, model, tools=[tool])
    assert with_tools > counter.count_messages(plain, model)

    calls = [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}]
    assert counter.count_messages(calls, model) > 3 + 3 + text("assistant")


def test_special_token_text_is_counted_not_rejected() -> None:
    # A prompt may contain the literal text of a special token; it is just text to bill.
    assert TokenCounter().count_text("<|endoftext|>", "gpt-4o") > 1


# --- cost rules -------------------------------------------------------------------------------


def body(**extra: object) -> dict[str, object]:
    return {"model": "gpt-4", "messages": COOKBOOK_MESSAGES, **extra}


def test_sum_rule_is_prompt_plus_max_tokens() -> None:
    estimator = CostEstimator(CostRule.SUM, default_max_tokens=256)
    assert estimator.estimate(body(max_tokens=100)).tokens == 129 + 100
    assert estimator.estimate(body(max_tokens=100)).requests == 1
    assert estimator.estimate(body()).tokens == 129 + 256
    # The newer field wins over the deprecated one.
    assert estimator.estimate(body(max_tokens=100, max_completion_tokens=40)).tokens == 129 + 40
    # n answers each may use max_tokens.
    assert estimator.estimate(body(max_tokens=100, n=3)).tokens == 129 + 300
    # Already counted prompt tokens are not counted again.
    assert estimator.estimate(body(max_tokens=100), prompt_tokens=7).tokens == 107


def test_max_rule_is_the_larger_of_max_tokens_and_a_character_estimate() -> None:
    estimator = CostEstimator(CostRule.MAX, default_max_tokens=16)
    chars = sum(len(m["content"]) for m in COOKBOOK_MESSAGES)
    assert estimator.estimate(body(max_tokens=10)).tokens == math.ceil(chars / 4)
    assert estimator.estimate(body(max_tokens=5000)).tokens == 5000
    assert estimator.estimate(body()).tokens == max(16, math.ceil(chars / 4))


def test_rules_by_name_and_bad_values() -> None:
    assert CostEstimator("max").rule is CostRule.MAX
    assert CostEstimator("sum").rule is CostRule.SUM
    with pytest.raises(ValueError, match="median"):
        CostEstimator("median")  # type: ignore[arg-type]
    estimator = CostEstimator(default_max_tokens=50)
    # Booleans and non-integers are not token counts: the default applies.
    assert estimator.estimate(body(max_tokens=True)).tokens == 129 + 50
    assert estimator.estimate(body(max_tokens="9")).tokens == 129 + 50
    assert estimator.estimate({"model": "gpt-4"}).tokens == 3 + 50


def test_integral_numbers_are_costed_as_the_upstream_reads_them() -> None:
    """JSON has one number type: ``300.0`` is 300 to the schema and to the upstream, so its cost
    is 300, not the default; ``n: 2.0`` is two answers."""
    estimator = CostEstimator(default_max_tokens=1024)
    assert estimator.estimate(body(max_tokens=300.0)).tokens == 129 + 300
    assert estimator.estimate(body(max_completion_tokens=40.0)).tokens == 129 + 40
    assert estimator.estimate(body(max_tokens=100, n=2.0)).tokens == 129 + 200
    assert estimator.estimate(body(max_tokens=300.5)).tokens == 129 + 1024
