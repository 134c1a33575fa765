"""The mock's embeddings, Responses API, legacy completions and model endpoints, as the
official openai SDK sees them: a real uvicorn process on Redis, every answer parsed by the
SDK's own types (strictly, with ``model_validate``, where the SDK itself would be lenient)."""

from __future__ import annotations

import base64
import math
import struct
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from openai_wire.sse import parse_event
from ratelimit.tokens import TokenCounter
from tests.processes import Service, running
from tests.test_mock_accounting import mock as in_process

EMBEDDING = "text-embedding-3-small"
MODEL = "gpt-4o-mini"
RPM = 8
TPM = 200_000
counter = TokenCounter()


@pytest.fixture(scope="module")
def mock(redis_url: str) -> Iterator[Service]:
    env = {
        "MOCK_REDIS_URL": redis_url,
        "MOCK_REDIS_PREFIX": f"test-mock-{uuid.uuid4().hex[:12]}",
        "MOCK_RPM_LIMIT": str(RPM),
        "MOCK_TPM_LIMIT": str(TPM),
        "MOCK_ADMIN": "true",
        "MOCK_LOG_REQUESTS": "false",
    }
    with running("llm_mock_server", env=env) as service:
        yield service


@pytest.fixture
def client(mock: Service) -> openai.OpenAI:
    httpx.post(f"{mock.url}/admin/reset", timeout=5).raise_for_status()
    return openai.OpenAI(base_url=mock.v1, api_key="sk-anything", max_retries=0)


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


# --- embeddings ----------------------------------------------------------------------------


def test_embedding_of_a_string(client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=EMBEDDING, input="hello there", encoding_format="float"
    )
    reply = CreateEmbeddingResponse.model_validate_json(raw.content)
    (row,) = reply.data
    assert len(row.embedding) == 1536
    assert abs(_norm(row.embedding) - 1) < 1e-5
    assert reply.model == EMBEDDING
    tokens = counter.count_text("hello there", EMBEDDING)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens
    # An embedding costs its input tokens: nothing is reserved for output.
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(TPM - tokens)
    assert raw.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)


def test_same_input_same_vector_other_input_other_vector(client: openai.OpenAI) -> None:
    first = client.embeddings.create(model=EMBEDDING, input="same", encoding_format="float").data[0]
    again = client.embeddings.create(model=EMBEDDING, input="same", encoding_format="float").data[0]
    other = client.embeddings.create(model=EMBEDDING, input="other", encoding_format="float").data[0]
    assert first.embedding == again.embedding
    assert first.embedding != other.embedding


def test_base64_is_little_endian_float32_of_the_same_vector(mock: Service, client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model=EMBEDDING, input="pack me", encoding_format="float").data[0]
    body = {"model": EMBEDDING, "input": "pack me", "encoding_format": "base64"}
    packed = httpx.post(f"{mock.v1}/embeddings", json=body, timeout=5).json()["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == floats.embedding
    # The SDK asks for base64 when not told and decodes it itself: the same numbers.
    decoded = client.embeddings.create(model=EMBEDDING, input="pack me").data[0]
    assert decoded.embedding == floats.embedding


def test_dimensions_shorten_and_renormalise(client: openai.OpenAI) -> None:
    full = client.embeddings.create(model=EMBEDDING, input="short", encoding_format="float").data[0].embedding
    short = (
        client.embeddings.create(model=EMBEDDING, input="short", dimensions=256, encoding_format="float")
        .data[0]
        .embedding
    )
    assert len(short) == 256
    assert abs(_norm(short) - 1) < 1e-5
    scale = _norm(full[:256])
    assert all(abs(s * scale - f) < 1e-6 for s, f in zip(short, full[:256], strict=True))
    large = client.embeddings.create(model="text-embedding-3-large", input="x", encoding_format="float")
    assert len(large.data[0].embedding) == 3072


def test_dimensions_refused_where_openai_refuses_them(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as fixed:
        client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=256)
    assert fixed.value.body["param"] == "dimensions"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as too_many:
        client.embeddings.create(model=EMBEDDING, input="x", dimensions=1537)
    assert "1536" in too_many.value.message


def test_lists_of_strings_and_token_arrays(client: openai.OpenAI) -> None:
    texts = ["alpha", "beta gamma", "delta"]
    reply = client.embeddings.create(model=EMBEDDING, input=texts, encoding_format="float")
    assert [row.index for row in reply.data] == [0, 1, 2]
    assert reply.usage.prompt_tokens == sum(counter.count_text(t, EMBEDDING) for t in texts)
    alone = client.embeddings.create(model=EMBEDDING, input="beta gamma", encoding_format="float")
    assert reply.data[1].embedding == alone.data[0].embedding

    tokens = client.embeddings.create(model=EMBEDDING, input=[1, 2, 3, 4], encoding_format="float")
    assert len(tokens.data) == 1
    assert tokens.usage.prompt_tokens == 4
    arrays = client.embeddings.create(model=EMBEDDING, input=[[1, 2], [3, 4, 5]], encoding_format="float")
    assert len(arrays.data) == 2
    assert arrays.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("", "empty"),
        ([], "empty"),
        (["ok", ""], "empty"),
        (["x"] * 2049, "2048"),
        ([1, -2], "input"),
        (["text", [1, 2]], "not a mix"),
        (5, "a list of strings"),
    ],
)
def test_bad_inputs_are_400s_that_cost_nothing(
    mock: Service, client: openai.OpenAI, value: object, words: str
) -> None:
    answer = httpx.post(f"{mock.v1}/embeddings", json={"model": EMBEDDING, "input": value}, timeout=5)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"].startswith("input")
    assert words in error["message"]
    assert answer.headers["x-ratelimit-remaining-requests"] == str(RPM)


def test_an_input_beyond_the_context_is_a_400_that_costs_nothing(
    mock: Service, client: openai.OpenAI
) -> None:
    fits = client.embeddings.create(model=EMBEDDING, input=[1] * 8192, encoding_format="float")
    assert fits.usage.prompt_tokens == 8192
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=EMBEDDING, input=[[1] * 10, [1] * 8193])
    assert "maximum context length is 8192 tokens, however you requested 8193 tokens" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)


def test_embedding_model_on_chat_and_chat_model_on_embeddings(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(model=EMBEDDING, messages=[{"role": "user", "content": "hi"}])
    assert chat.value.code == "model_not_supported"
    with pytest.raises(openai.BadRequestError) as embed:
        client.embeddings.create(model=MODEL, input="hi")
    assert embed.value.code == "model_not_supported"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.embeddings.create(model="text-embedding-9", input="hi")
    assert unknown.value.code == "model_not_found"


# --- responses -----------------------------------------------------------------------------


def test_response_plain(client: openai.OpenAI) -> None:
    raw = client.responses.with_raw_response.create(
        model=MODEL, input="Say hi.", instructions="Be brief.", max_output_tokens=200
    )
    reply = Response.model_validate_json(raw.content)
    assert reply.id.startswith("resp_")
    assert reply.status == "completed"
    assert reply.output_text
    assert reply.instructions == "Be brief."
    assert reply.usage is not None
    prompt = counter.count_response_input("Say hi.", "Be brief.", MODEL)
    assert reply.usage.input_tokens == prompt
    assert reply.usage.output_tokens == counter.count_text(reply.output_text, MODEL)
    assert reply.usage.total_tokens == reply.usage.input_tokens + reply.usage.output_tokens
    # Charged at admission: input + max_output_tokens.
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(TPM - prompt - 200)


def test_response_with_message_list_input_is_deterministic(client: openai.OpenAI) -> None:
    messages = [
        {"role": "developer", "content": "Answer in one line."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is a mock?"}]},
    ]
    first = client.responses.create(model=MODEL, input=messages)  # type: ignore[arg-type]
    again = client.responses.create(model=MODEL, input=messages)  # type: ignore[arg-type]
    assert first.output_text == again.output_text
    assert first.id != again.id
    assert first.usage is not None
    assert first.usage.input_tokens == counter.count_response_input(messages, None, MODEL)


def test_response_cut_by_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    reply = client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=16)
    assert reply.status == "incomplete"
    assert reply.incomplete_details is not None
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.usage is not None
    assert reply.usage.output_tokens == 16


ORDER = [
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseContentPartAddedEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseContentPartDoneEvent,
    ResponseOutputItemDoneEvent,
    ResponseCompletedEvent,
]


def test_response_stream_has_openais_event_sequence(client: openai.OpenAI) -> None:
    plain = client.responses.create(model=MODEL, input="Stream it.", max_output_tokens=500)
    with client.responses.create(
        model=MODEL, input="Stream it.", max_output_tokens=500, stream=True
    ) as stream:
        seen = list(stream)
    kinds = [type(e) for e in seen]
    deltas = [e for e in seen if isinstance(e, ResponseTextDeltaEvent)]
    assert len(deltas) > 1
    # Collapse the deltas to one entry, then the order is exactly OpenAI's.
    collapsed = [k for i, k in enumerate(kinds) if not (k is ResponseTextDeltaEvent and kinds[i - 1] is k)]
    assert collapsed == ORDER
    assert [e.sequence_number for e in seen] == list(range(len(seen)))
    text = "".join(d.delta for d in deltas)
    done = next(e for e in seen if isinstance(e, ResponseTextDoneEvent))
    assert done.text == text == plain.output_text
    final = seen[-1]
    assert isinstance(final, ResponseCompletedEvent)
    Response.model_validate(final.response.model_dump())
    assert final.response.usage is not None
    assert final.response.usage.output_tokens == counter.count_text(text, MODEL)
    assert final.response.usage.input_tokens == counter.count_response_input("Stream it.", None, MODEL)
    ids = {e.item_id for e in seen if isinstance(e, ResponseTextDeltaEvent | ResponseTextDoneEvent)}
    assert ids == {final.response.output[0].id}


def test_response_stream_wire_names_each_event(mock: Service) -> None:
    body = {"model": MODEL, "input": "Wire.", "stream": True, "max_output_tokens": 16}
    with httpx.stream("POST", f"{mock.v1}/responses", json=body, timeout=5) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert "x-ratelimit-remaining-requests" in answer.headers
        frames = answer.read().split(b"\n\n")
    frames = [f for f in frames if f]
    for frame in frames:
        name = frame.split(b"\n", 1)[0]
        payload = parse_event(frame)
        assert payload is not None
        assert name == b"event: " + payload["type"].encode()
    assert b"[DONE]" not in b"".join(frames)
    # Cut by max_output_tokens: the stream ends in response.incomplete, with the usage.
    last = parse_event(frames[-1])
    assert last is not None
    assert last["type"] == "response.incomplete"
    assert ResponseIncompleteEvent.model_validate(last).response.usage is not None


def test_previous_response_id_is_a_clear_400_that_costs_nothing(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input="Again.", previous_response_id="resp_123")
    assert caught.value.code == "previous_response_not_found"
    assert "keeps no state" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == str(RPM)


def test_responses_bad_bodies_are_400s(mock: Service) -> None:
    for body in (
        {"model": MODEL},
        {"model": MODEL, "input": "x", "max_output_tokens": 15},
        {"model": MODEL, "input": [{"role": "robot", "content": "x"}]},
        {"model": MODEL, "input": "x", "stream": "yes"},
    ):
        answer = httpx.post(f"{mock.v1}/responses", json=body, timeout=5)
        assert answer.status_code == 400, body
        assert answer.json()["error"]["type"] == "invalid_request_error"


# --- legacy completions --------------------------------------------------------------------


def test_completion_plain(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model=MODEL, prompt="Once upon a time", max_tokens=30)
    reply = Completion.model_validate_json(raw.content)
    assert reply.object == "text_completion"
    (choice,) = reply.choices
    assert choice.text
    assert reply.usage is not None
    prompt = counter.count_text("Once upon a time", MODEL)
    assert reply.usage.prompt_tokens == prompt
    assert reply.usage.completion_tokens == counter.count_text(choice.text, MODEL) <= 30
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(TPM - prompt - 30)


def test_completion_default_max_tokens_is_openais_16(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Go on")
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 16


def test_completion_n_per_prompt(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=["One", "Two"], n=2, max_tokens=20)
    reply = raw.parse()
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text != reply.choices[1].text
    assert reply.usage is not None
    prompt = counter.count_text("One", MODEL) + counter.count_text("Two", MODEL)
    assert reply.usage.prompt_tokens == prompt
    # Charged: the prompts + max_tokens for each of the 2 x 2 choices.
    assert raw.headers["x-ratelimit-remaining-tokens"] == str(TPM - prompt - 4 * 20)


@pytest.mark.parametrize("include_usage", [False, True])
def test_completion_stream(client: openai.OpenAI, include_usage: bool) -> None:
    plain = client.completions.create(model=MODEL, prompt="Stream", max_tokens=40)
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(
        client.completions.create(model=MODEL, prompt="Stream", max_tokens=40, stream=True, **options)
    )
    assert all(isinstance(c, Completion) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == plain.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [plain.choices[0].finish_reason]
    usage = [c.usage for c in chunks if c.usage is not None]
    if include_usage:
        assert usage == [plain.usage]
        assert chunks[-1].choices == []
    else:
        assert usage == []


# --- models, limits, faults on the new endpoints --------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {MODEL, EMBEDDING, "text-embedding-3-large", "text-embedding-ada-002"} <= ids
    assert client.models.retrieve(EMBEDDING).id == EMBEDDING
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-9")
    assert caught.value.code == "model_not_found"


def test_every_endpoint_spends_one_budget_then_429s(client: openai.OpenAI) -> None:
    for _ in range(2):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}], max_tokens=5)
        client.embeddings.create(model=EMBEDDING, input="b")
        client.responses.create(model=MODEL, input="c", max_output_tokens=16)
        client.completions.create(model=MODEL, prompt="d", max_tokens=5)
    for call in (
        lambda: client.embeddings.create(model=EMBEDDING, input="e"),
        lambda: client.responses.create(model=MODEL, input="f"),
        lambda: client.completions.create(model=MODEL, prompt="g"),
        lambda: client.responses.create(model=MODEL, input="h", stream=True),
    ):
        with pytest.raises(openai.RateLimitError) as caught:
            call()
        assert caught.value.code == "rate_limit_exceeded"
        assert f"Limit {RPM}, Used {RPM}" in caught.value.message
        headers = caught.value.response.headers
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert int(headers["retry-after-ms"]) > 0


def test_forced_faults_on_the_new_endpoints(mock: Service, client: openai.OpenAI) -> None:
    body = {"model": EMBEDDING, "input": "fault"}
    for fault, status in (("429", 429), ("500", 500), ("503", 503)):
        answer = httpx.post(f"{mock.v1}/embeddings", json=body, headers={"x-mock-fault": fault}, timeout=5)
        assert answer.status_code == status
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
    answer = httpx.post(
        f"{mock.v1}/responses",
        json={"model": MODEL, "input": "x"},
        headers={"x-mock-fault": "429"},
        timeout=5,
    )
    assert answer.status_code == 429


def test_other_methods_on_the_new_paths_are_405s(mock: Service) -> None:
    for path in ("/v1/embeddings", "/v1/responses", "/v1/completions"):
        assert httpx.get(f"{mock.url}{path}", timeout=5).status_code == 405


# --- paced answers (MOCK_TTFT_MS, MOCK_TOKENS_PER_S) ----------------------------------------


async def _events(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> list[dict]:
    async with client.stream("POST", path, json=body) as answer:
        assert answer.status_code == 200
        frames = (await answer.aread()).split(b"\n\n")
    return [e for e in (parse_event(f) for f in frames if f) if e is not None]


def _text(events: list[dict]) -> str:
    parts = [e.get("delta", "") for e in events if e.get("type") == "response.output_text.delta"]
    parts += [c["text"] for e in events for c in e.get("choices", [])]
    return "".join(parts)


async def test_paced_streams_carry_the_same_events() -> None:
    responses = {"model": MODEL, "input": "Pace me.", "max_output_tokens": 20, "stream": True}
    legacy = {"model": MODEL, "prompt": "Pace me.", "max_tokens": 12, "stream": True, "n": 2}
    async with in_process() as instant:
        fast = await _events(instant, "/v1/responses", responses)
        fast_legacy = await _events(instant, "/v1/completions", legacy)
    async with in_process(ttft_ms=20, tokens_per_s=2000) as paced:
        slow = await _events(paced, "/v1/responses", responses)
        slow_legacy = await _events(paced, "/v1/completions", legacy)
    assert [e["type"] for e in slow] == [e["type"] for e in fast]
    assert [e["sequence_number"] for e in slow] == list(range(len(fast)))
    assert _text(slow) == _text(fast) != ""
    assert _text(slow_legacy) == _text(fast_legacy) != ""
    assert [c["index"] for e in slow_legacy for c in e["choices"]] == [
        c["index"] for e in fast_legacy for c in e["choices"]
    ]
