"""What crosses the gateway: SSE usage tapping, headers in and out, 429 waits, settings."""

from __future__ import annotations

import json

import httpx
import pytest

from apim_server.accounting import usage_of
from apim_server.config import Settings, settings_table
from apim_server.gateway import budget_key, redacted
from apim_server.streaming import UsageTap
from apim_server.upstream import Upstream, final_429, passed_back, retry_wait_s
from llm_mock_server.embeddings import EmbeddingsEndpoint
from llm_mock_server.responses import ResponsesEndpoint
from openai_wire.embeddings import EmbeddingRequest
from openai_wire.responses import ResponsesRequest
from openai_wire.sse import DONE, event

CHUNK = {"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
USAGE = {"id": "c1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}


def stream_bytes() -> bytes:
    return event({**CHUNK, "usage": None}) + event({**CHUNK, "usage": None}) + event(USAGE) + DONE


def test_usage_tap_knows_the_usage_is_final_only_at_the_streams_end() -> None:
    # A server may send a running usage on every chunk (vLLM's continuous_usage_stats): only
    # the last one counts, and the stream's end says which that is.
    tap = UsageTap(strip=False)
    for completion in (1, 2, 9):
        usage = {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}
        tap.feed(event({**CHUNK, "usage": usage}))
        assert not tap.ended
    tap.feed(event({**CHUNK, "choices": [{"index": 0, "delta": {"content": "data: [DONE]"}}]}))
    assert not tap.ended, "the words inside a chunk are not the end"
    tap.feed(DONE)
    assert tap.ended
    assert tap.usage == {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}


def test_usage_tap_takes_a_responses_final_event_as_the_end() -> None:
    tap = UsageTap(strip=True)
    tap.feed(event({"type": "response.output_text.delta", "delta": "hi"}))
    assert not tap.ended
    final = {"type": "response.completed", "response": {"usage": {"input_tokens": 3, "output_tokens": 4}}}
    tap.feed(event(final))
    assert tap.ended
    assert tap.usage == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


@pytest.mark.parametrize("cut", [1, 7, 50, 10_000])
def test_usage_tap_strips_the_usage_chunk_however_the_stream_is_cut(cut: int) -> None:
    raw = stream_bytes()
    tap = UsageTap(strip=True)
    out = b"".join(tap.feed(raw[i : i + cut]) for i in range(0, len(raw), cut)) + tap.flush()
    assert tap.usage == USAGE["usage"]
    assert out == event({**CHUNK, "usage": None}) * 2 + DONE


def test_usage_tap_keeps_the_usage_chunk_when_asked() -> None:
    tap = UsageTap(strip=False)
    raw = stream_bytes()
    assert tap.feed(raw) + tap.flush() == raw
    assert tap.usage == USAGE["usage"]


def test_usage_tap_passes_a_partial_frame_on_only_when_complete() -> None:
    tap = UsageTap(strip=True)
    frame = event({**CHUNK, "usage": None})
    assert tap.feed(frame[:10]) == b""
    assert tap.feed(frame[10:]) == frame


def test_usage_tap_never_strips_a_chunk_with_choices() -> None:
    # Some servers report usage on content chunks: those must reach the caller.
    with_choices = event({**CHUNK, "usage": USAGE["usage"]})
    tap = UsageTap(strip=True)
    assert tap.feed(with_choices) == with_choices
    assert tap.usage == USAGE["usage"]


def test_usage_of_a_completion_body() -> None:
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'say "total_tokens": 99'}}],
            "usage": {
                "prompt_tokens": 8,
                "completion_tokens": 20,
                "total_tokens": 28,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        }
    ).encode()
    assert usage_of(body) == {"prompt_tokens": 8, "completion_tokens": 20, "total_tokens": 28}
    assert usage_of(b'{"usage": null}') is None


def test_caller_headers_forwarded_by_the_allow_list() -> None:
    upstream = Upstream("http://127.0.0.1:9/v1", "", 4, 5)
    caller = [
        (b"host", b"gateway"),
        (b"authorization", b"Bearer sk-caller"),
        (b"x-request-id", b"spoofed"),
        (b"x-apim-priority", b"high"),
        (b"connection", b"keep-alive"),
        (b"x-mock-fault", b"500"),
        (b"user-agent", b"OpenAI/Python"),
    ]
    headers = dict(upstream.headers(caller, "req_1"))
    assert headers == {
        b"x-request-id": b"req_1",
        b"accept-encoding": b"identity",
        b"authorization": b"Bearer sk-caller",
        b"user-agent": b"OpenAI/Python",
    }
    testing = Upstream("http://127.0.0.1:9/v1", "", 4, 5, forward_mock_faults=True)
    assert dict(testing.headers(caller, "req_1"))[b"x-mock-fault"] == b"500"
    keyed = dict(Upstream("http://127.0.0.1:9/v1", "sk-gateway", 4, 5).headers(caller, "req_2"))
    assert keyed[b"authorization"] == b"Bearer sk-gateway"


def test_headers_passed_back_to_the_caller() -> None:
    upstream = httpx.Headers(
        {
            "x-ratelimit-remaining-requests": "3",
            "x-ratelimit-reset-tokens": "6m0s",
            "openai-processing-ms": "12",
            "content-type": "application/json",
            "x-request-id": "req_up",
            "set-cookie": "a=b",
            "server": "uvicorn",
        }
    )
    assert passed_back(upstream) == {
        "x-ratelimit-remaining-requests": "3",
        "x-ratelimit-reset-tokens": "6m0s",
        "openai-processing-ms": "12",
        "content-type": "application/json",
        "x-upstream-request-id": "req_up",
    }


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "1500", "retry-after": "2"}, 1.5),
        ({"retry-after": "3"}, 3.0),
        (
            {
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-requests": "1m2s",
                "x-ratelimit-remaining-tokens": "10",
                "x-ratelimit-reset-tokens": "5s",
            },
            62.0,
        ),
        ({}, 1.0),
    ],
)
def test_how_long_a_429_asks_us_to_wait(headers: dict[str, str], seconds: float) -> None:
    assert retry_wait_s(httpx.Headers(headers)) == pytest.approx(seconds)


def test_final_429s_are_not_retried() -> None:
    assert final_429(b'{"error": {"code": "insufficient_quota", "message": "You exceeded your quota"}}')
    assert final_429(b'{"error": {"code": "rate_limit_exceeded", "message": "Request too large for gpt-4o"}}')
    assert not final_429(b'{"error": {"code": "rate_limit_exceeded", "message": "Rate limit reached"}}')
    assert not final_429(b"not json")


def test_one_budget_per_upstream_and_no_password_in_logs() -> None:
    assert budget_key("http://127.0.0.1:8000/v1") == budget_key("http://127.0.0.1:8000/v1")
    assert budget_key("http://127.0.0.1:8000/v1") != budget_key("http://127.0.0.1:8002/v1")
    assert redacted("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("redis://user:s3cret@host/0") == "redis://user:***@host/0"
    assert redacted("redis://host:6379/0") == "redis://host:6379/0"


def test_settings_table_lists_every_setting_with_a_description() -> None:
    rows = settings_table()
    names = [name for name, _, _ in rows]
    assert len(names) == len(Settings.model_fields)
    assert all(name.startswith("APIM_") for name in names)
    assert all(description for _, _, description in rows)
    assert ("APIM_QUEUE_TIMEOUT_S", "300", rows[names.index("APIM_QUEUE_TIMEOUT_S")][2]) in rows
    assert dict((n, d) for n, d, _ in rows)["APIM_UPSTREAM_URL"] == "http://127.0.0.1:8000/v1"


def test_the_upstream_key_is_never_shown() -> None:
    settings = Settings(upstream_api_key="sk-secret-value")
    assert "sk-secret-value" not in repr(settings)
    assert "sk-secret-value" not in str(settings.model_dump())


def _responses_stream(max_output_tokens: int | None) -> tuple[bytes, int, int]:
    """A Responses API stream as the mock writes it, with its prompt and output tokens."""
    data = {
        "model": "gpt-4o-mini",
        "input": "Count me.",
        "stream": True,
        "max_output_tokens": max_output_tokens,
    }
    reply = ResponsesEndpoint(["gpt-4o-mini"], [], seed=0).reply(
        data, ResponsesRequest.model_validate(data), 11
    )
    return reply.head + b"".join(reply.frames) + reply.tail, reply.prompt_tokens, reply.completion_tokens


@pytest.mark.parametrize(("max_output_tokens", "cut"), [(None, 7), (16, 100), (None, 1)])
def test_usage_tap_reads_a_responses_stream_and_strips_nothing(
    max_output_tokens: int | None, cut: int
) -> None:
    stream, prompt, output = _responses_stream(max_output_tokens)
    tap = UsageTap(strip=True)
    passed = b"".join(tap.feed(stream[i : i + cut]) for i in range(0, len(stream), cut)) + tap.flush()
    assert passed == stream
    assert tap.usage == {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
    }


def test_usage_of_embeddings_and_responses_bodies() -> None:
    # The gateway settles a plain answer from its usage's counts, whatever the endpoint.
    data = {"model": "text-embedding-3-small", "input": ["a", "b"]}
    embedded = EmbeddingsEndpoint(["text-embedding-3-small"], [], 0).reply(
        data, EmbeddingRequest.model_validate(data), 2
    )
    assert usage_of(embedded.body) == {"prompt_tokens": 2, "total_tokens": 2}
    data = {"model": "gpt-4o-mini", "input": "Hi."}
    answered = ResponsesEndpoint(["gpt-4o-mini"], [], 0).reply(data, ResponsesRequest.model_validate(data), 9)
    counts = usage_of(answered.body)
    assert counts is not None
    assert counts["total_tokens"] == 9 + answered.completion_tokens
