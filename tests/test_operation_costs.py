"""What embeddings, Responses API and legacy completions requests cost at admission (the
shared rules both services charge), and the wire helpers the gateway settles them with."""

from __future__ import annotations

import base64
import json
import math
import struct

import pytest

from openai_wire.embeddings import EmbeddingRequest, base64_vector
from openai_wire.responses import COMPLETED, INCOMPLETE, usage_of
from openai_wire.sse import named_event, parse_event
from ratelimit.cost import CostEstimator, CostRule, Operation
from ratelimit.tokens import TokenCounter

counter = TokenCounter()
EMBED = "text-embedding-3-small"


def tokens(text: str, model: str = EMBED) -> int:
    return counter.count_text(text, model)


@pytest.mark.parametrize("rule", list(CostRule))
def test_embeddings_cost_their_input_tokens_under_either_rule(rule: CostRule) -> None:
    estimator = CostEstimator(rule, default_max_tokens=999)
    cost = estimator.estimate({"model": EMBED, "input": "hello world"}, operation=Operation.EMBEDDINGS)
    assert cost.requests == 1
    assert cost.tokens == tokens("hello world")
    many = {"model": EMBED, "input": ["a b", "c", "d e f"]}
    assert estimator.estimate(many, operation=Operation.EMBEDDINGS).tokens == sum(
        tokens(t) for t in ("a b", "c", "d e f")
    )
    assert (
        estimator.estimate({"model": EMBED, "input": [5, 6, 7]}, operation=Operation.EMBEDDINGS).tokens == 3
    )
    arrays = {"model": EMBED, "input": [[1], [2, 3]]}
    assert estimator.estimate(arrays, operation=Operation.EMBEDDINGS).tokens == 3


def test_embeddings_use_the_models_encoding() -> None:
    # text-embedding-3 counts with cl100k_base, as gpt-4 does, not o200k_base.
    text = "Tokenisation differs between encodings: 12345 ünïcödé"
    assert tokens(text) == tokens(text, "gpt-4")


def test_responses_cost_input_plus_max_output_tokens_or_the_default() -> None:
    estimator = CostEstimator(CostRule.SUM, default_max_tokens=300)
    body = {"model": "gpt-4o", "input": "Hi there", "instructions": "Be brief."}
    prompt = counter.count_response_input("Hi there", "Be brief.", "gpt-4o")
    # As chat messages: a developer and a user message, each with its overhead, plus the reply's.
    assert prompt == counter.count_messages(
        [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi there"}], "gpt-4o"
    )
    assert estimator.estimate(body, operation=Operation.RESPONSES).tokens == prompt + 300
    capped = {**body, "max_output_tokens": 40}
    assert estimator.estimate(capped, operation=Operation.RESPONSES).tokens == prompt + 40
    items = [{"role": "user", "content": [{"type": "input_text", "text": "What is this?"}]}]
    listed = {"model": "gpt-4o", "input": items, "max_output_tokens": 20}
    assert estimator.estimate(listed, operation=Operation.RESPONSES).tokens == (
        counter.count_messages([{"role": "user", "content": "What is this?"}], "gpt-4o") + 20
    )


def test_responses_max_rule_uses_characters() -> None:
    estimator = CostEstimator(CostRule.MAX, default_max_tokens=16)
    body = {"model": "gpt-4o", "input": "x" * 400, "instructions": "y" * 40}
    assert estimator.estimate(body, operation=Operation.RESPONSES).tokens == math.ceil(440 / 4)
    body["max_output_tokens"] = 5000
    assert estimator.estimate(body, operation=Operation.RESPONSES).tokens == 5000


def test_completions_cost_prompts_plus_max_tokens_for_every_choice() -> None:
    estimator = CostEstimator(CostRule.SUM, default_max_tokens=1024)
    one = {"model": "gpt-4o", "prompt": "Once upon", "max_tokens": 10}
    assert (
        estimator.estimate(one, operation=Operation.COMPLETIONS).tokens == tokens("Once upon", "gpt-4o") + 10
    )
    # OpenAI's own default for legacy completions is 16, not the chat default.
    default = {"model": "gpt-4o", "prompt": "Once upon"}
    assert (
        estimator.estimate(default, operation=Operation.COMPLETIONS).tokens
        == tokens("Once upon", "gpt-4o") + 16
    )
    # n choices for each of 2 prompts; best_of candidates are generated (and charged) too.
    several = {"model": "gpt-4o", "prompt": ["a", "b"], "max_tokens": 10, "n": 2}
    prompt = tokens("a", "gpt-4o") + tokens("b", "gpt-4o")
    assert estimator.estimate(several, operation=Operation.COMPLETIONS).tokens == prompt + 2 * 2 * 10
    best = {**several, "best_of": 3}
    assert estimator.estimate(best, operation=Operation.COMPLETIONS).tokens == prompt + 2 * 3 * 10
    ids = {"model": "gpt-4o", "prompt": [1, 2, 3], "max_tokens": 10}
    assert estimator.estimate(ids, operation=Operation.COMPLETIONS).tokens == 3 + 10


def test_chat_is_the_default_operation() -> None:
    estimator = CostEstimator(default_max_tokens=10)
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert estimator.estimate(body) == estimator.estimate(body, operation=Operation.CHAT)


def test_base64_vectors_are_little_endian_float32() -> None:
    vector = [0.5, -0.25, 1.0]
    raw = base64.b64decode(base64_vector(vector))
    assert raw == struct.pack("<3f", *vector)


def test_embedding_request_inputs() -> None:
    assert EmbeddingRequest.model_validate({"model": EMBED, "input": "x"}).inputs() == ["x"]
    assert EmbeddingRequest.model_validate({"model": EMBED, "input": [1, 2]}).inputs() == [[1, 2]]
    assert EmbeddingRequest.model_validate({"model": EMBED, "input": [[1], [2.0]]}).inputs() == [[1], [2]]
    with pytest.raises(ValueError, match="2048"):
        EmbeddingRequest.model_validate({"model": EMBED, "input": ["x"] * 2049})
    # One token array may be longer than 2,048 tokens: it is one input.
    assert len(EmbeddingRequest.model_validate({"model": EMBED, "input": [1] * 3000}).inputs()) == 1


def test_usage_of_a_final_event_or_a_response() -> None:
    response = {"object": "response", "usage": {"input_tokens": 7, "output_tokens": 9, "total_tokens": 16}}
    assert usage_of(response) == (7, 9)
    assert usage_of({"type": COMPLETED, "response": response}) == (7, 9)
    assert usage_of({"type": INCOMPLETE, "response": response}) == (7, 9)
    assert usage_of({"type": "response.output_text.delta", "delta": "x"}) is None
    assert usage_of({"type": COMPLETED, "response": {"usage": None}}) is None
    assert usage_of({"usage": {"input_tokens": True, "output_tokens": 1}}) is None


def test_named_events_frame_like_openai() -> None:
    frame = named_event({"type": "response.created", "sequence_number": 0})
    assert frame.startswith(b"event: response.created\ndata: {")
    assert frame.endswith(b"\n\n")
    assert parse_event(frame) == {"type": "response.created", "sequence_number": 0}
    assert json.loads(frame.split(b"data: ", 1)[1]) == {"type": "response.created", "sequence_number": 0}
