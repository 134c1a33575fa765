"""The mock as the official openai SDK sees it: a real uvicorn process on Redis."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ratelimit.tokens import TokenCounter
from tests.processes import Service, running

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the mock."}]
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")
RATE_LIMIT_MESSAGE = re.compile(
    r"^Rate limit reached for gpt-4o-mini in organization org-mock on requests per min \(RPM\): "
    r"Limit 5, Used 5, Requested 1\. Please try again in (?P<wait>[0-9.hms]+)\. "
    r"Visit https://platform\.openai\.com/account/rate-limits to learn more\.$"
)


@pytest.fixture(scope="module")
def mock(redis_url: str) -> Iterator[Service]:
    env = {
        "MOCK_REDIS_URL": redis_url,
        "MOCK_REDIS_PREFIX": f"test-mock-{uuid.uuid4().hex[:12]}",
        "MOCK_RPM_LIMIT": "5",
        "MOCK_TPM_LIMIT": "100000",
        "MOCK_ADMIN": "true",
        "MOCK_LOG_REQUESTS": "false",
    }
    with running("llm_mock_server", env=env) as service:
        yield service


@pytest.fixture
def client(mock: Service) -> openai.OpenAI:
    httpx.post(f"{mock.url}/admin/reset", timeout=5).raise_for_status()
    return openai.OpenAI(base_url=mock.v1, api_key="sk-anything", max_retries=0)


def test_plain_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    reply = raw.parse()
    assert isinstance(reply, ChatCompletion)
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    assert reply.object == "chat.completion"
    (choice,) = reply.choices
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content
    counter = TokenCounter()
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == counter.count_messages(MESSAGES, MODEL)
    assert reply.usage.completion_tokens == counter.count_text(choice.message.content, MODEL)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert re.fullmatch(r"req_[0-9a-f]{32}", raw.headers["x-request-id"])
    assert int(raw.headers["openai-processing-ms"]) >= 0
    assert raw.headers["x-ratelimit-limit-requests"] == "5"
    assert raw.headers["x-ratelimit-remaining-requests"] == "4"
    # The estimate charged at admission: prompt + the default max tokens (sum rule).
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) == 100_000 - reply.usage.prompt_tokens - 1024


def test_same_request_same_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    again = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    other = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Other."}])
    assert first.choices[0].message.content == again.choices[0].message.content
    assert first.choices[0].message.content != other.choices[0].message.content
    assert first.id != again.id


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_binds_with_finish_reason_length(client: openai.OpenAI, field: str) -> None:
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, **{field: 5})
    (choice,) = reply.choices
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 5
    assert TokenCounter().count_text(choice.message.content or "", MODEL) == 5


def test_n_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="gpt-4", messages=MESSAGES, n=3, max_tokens=40)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 3
    counter = TokenCounter()
    assert reply.usage is not None
    assert reply.usage.completion_tokens == sum(
        counter.count_text(c.message.content or "", "gpt-4") for c in reply.choices
    )


def test_streaming_with_usage_through_the_sdk(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=30, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert all(c.usage is None for c in body)
    assert body[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == plain.choices[0].message.content  # the same answer, streamed
    assert body[-1].choices[0].finish_reason == plain.choices[0].finish_reason
    assert plain.usage is not None
    assert last.usage.completion_tokens == plain.usage.completion_tokens
    assert last.usage.prompt_tokens == plain.usage.prompt_tokens


def _sse_frames(response: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


@pytest.mark.parametrize("include_usage", [True, False])
def test_streaming_wire_format(mock: Service, client: openai.OpenAI, include_usage: bool) -> None:
    body: dict[str, object] = {"model": MODEL, "messages": MESSAGES, "stream": True, "max_tokens": 12}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with httpx.stream("POST", f"{mock.v1}/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-ratelimit-remaining-requests"] == "4"
        frames = _sse_frames(response)
    assert frames[-1] == "[DONE]"
    events = [json.loads(f) for f in frames[:-1]]
    assert {e["id"] for e in events} == {events[0]["id"]}
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert all("usage" in e for e in events)
    if include_usage:
        *chunks, usage = events
        assert usage["choices"] == []
        assert usage["usage"]["completion_tokens"] == 12
        assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 12
    else:
        chunks = events
    assert all(e["usage"] is None for e in chunks)
    assert all(len(e["choices"]) == 1 for e in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert sum(1 for e in chunks if e["choices"][0]["delta"].get("content")) == 12


def test_headers_count_down_then_429_as_openai_rate_limit_error(client: openai.OpenAI) -> None:
    remaining = []
    for _ in range(5):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert GO_DURATION.match(raw.headers["x-ratelimit-reset-requests"])
        assert GO_DURATION.match(raw.headers["x-ratelimit-reset-tokens"])
    assert remaining == ["4", "3", "2", "1", "0"]

    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    assert error.type == "requests"
    match = RATE_LIMIT_MESSAGE.match(str(error.body["message"]))  # type: ignore[index]
    assert match, error.body
    headers = error.response.headers
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert GO_DURATION.match(headers["x-ratelimit-reset-requests"])
    wait_ms = int(headers["retry-after-ms"])
    assert 0 < wait_ms <= 60_000
    assert int(headers["retry-after"]) == -(-wait_ms // 1000)
    assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])


def test_status_reports_the_redis_store_and_usage(mock: Service, client: openai.OpenAI) -> None:
    before = mock.status()
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    status = mock.status()
    assert status["service"] == "llm-mock"
    assert status["store"] == "redis"
    assert status["limits"]["rpm"] == {
        "limit": 5,
        "used": 1,
        "remaining": 4,
        "reset_s": status["limits"]["rpm"]["reset_s"],
    }
    assert set(status["limits"]) >= {"rpm", "tpm", "rpd", "tpd"}
    assert status["totals"]["requests"] == before["totals"]["requests"] + 1
    assert httpx.get(f"{mock.url}/readyz", timeout=5).status_code == 200


def test_sdk_retry_succeeds_once_the_short_window_frees() -> None:
    # RPM 60 enforced per 1 s sub-window: one request per second, so the 429 says "wait < 1 s".
    env = {"MOCK_RPM_LIMIT": "60", "MOCK_SHORT_WINDOW_S": "1", "MOCK_LOG_REQUESTS": "false"}
    with running("llm_mock_server", env=env) as service:
        strict = openai.OpenAI(base_url=service.v1, api_key="sk-x", max_retries=0)
        patient = openai.OpenAI(base_url=service.v1, api_key="sk-x", max_retries=3)
        strict.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        with pytest.raises(openai.RateLimitError) as caught:
            strict.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        expected = "requests per 1s (RPM 60 enforced per 1s): Limit 1, Used 1, Requested 1"
        assert expected in caught.value.message
        assert int(caught.value.response.headers["retry-after-ms"]) <= 1000

        raw = patient.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=2)
        assert raw.retries_taken >= 1
        assert raw.parse().choices[0].message.content
        assert service.status()["totals"]["rate_limited"] >= 2
