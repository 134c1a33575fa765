"""The shared wire helpers: Go-style durations, rate-limit headers, SSE framing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_wire.headers import go_duration, parse_go_duration, ratelimit_headers, retry_after_headers
from openai_wire.sse import DONE, event, parse_event
from ratelimit import Cost, EmbeddedStore, Limits


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "0s"),
        (1, "1ms"),
        (20, "20ms"),
        (999, "999ms"),
        (1000, "1s"),
        (1500, "1.5s"),
        (1001, "1.001s"),
        (59_999, "59.999s"),
        (60_000, "1m0s"),
        (360_000, "6m0s"),
        (61_500, "1m1.5s"),
        (3_600_000, "1h0m0s"),
        (3_723_000, "1h2m3s"),
        (86_400_000, "24h0m0s"),
        (0.2, "1ms"),  # never round a wait down to "now"
        (-5, "0s"),
    ],
)
def test_go_duration(ms: float, text: str) -> None:
    assert go_duration(ms) == text


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("1h2m3s", 3723.0),
        ("2m", 120.0),
        ("7.66s", 7.66),
        ("500us", 0.0005),
        ("500µs", 0.0005),
        ("10ns", 1e-8),
        (" 3s ", 3.0),
        ("", 0.0),
        ("soon", 0.0),
        ("5x", 0.0),
    ],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@given(st.integers(0, 10 * 86_400_000))
def test_duration_round_trip(ms: int) -> None:
    assert round(parse_go_duration(go_duration(ms)) * 1000) == ms


async def test_ratelimit_headers_from_a_decision() -> None:
    clock_ms = [1_700_000_000_000]
    store = EmbeddedStore(clock=lambda: clock_ms[0])
    policy = Limits(rpm=60, tpm=1000).policy()
    await store.acquire("k", policy, Cost(1, 400))
    clock_ms[0] += 1500
    decision = await store.acquire("k", policy, Cost(1, 100))
    assert ratelimit_headers(decision) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "58",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "500",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    clock_ms[0] += 30_000
    look = await store.peek("k", policy)
    assert ratelimit_headers(look)["x-ratelimit-reset-tokens"] == "30s"


async def test_ratelimit_headers_leave_out_unlimited_units() -> None:
    store = EmbeddedStore(clock=lambda: 1_700_000_000_000)
    decision = await store.acquire("k", Limits(tpm=1000).policy(), Cost(1, 10))
    headers = ratelimit_headers(decision)
    assert set(headers) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }


async def test_remaining_never_goes_negative_after_a_charge() -> None:
    store = EmbeddedStore(clock=lambda: 1_700_000_000_000)
    policy = Limits(tpm=100).policy()
    await store.acquire("k", policy, Cost(1, 100))
    decision = await store.charge("k", policy, Cost(0, 50))
    assert ratelimit_headers(decision)["x-ratelimit-remaining-tokens"] == "0"


@pytest.mark.parametrize(
    ("wait_ms", "seconds", "ms"),
    [(1500, "2", "1500"), (1000, "1", "1000"), (1, "1", "1"), (0, "1", "0"), (59_001, "60", "59001")],
)
def test_retry_after_rounds_up(wait_ms: int, seconds: str, ms: str) -> None:
    assert retry_after_headers(wait_ms) == {"retry-after": seconds, "retry-after-ms": ms}


def test_sse_event_framing() -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "choices": [{"delta": {"content": "héllo"}}],
    }
    frame = event(chunk)
    assert frame.startswith(b"data: ")
    assert frame.endswith(b"\n\n")
    assert frame.count(b"\n") == 2  # one line: JSON never spans lines
    assert json.loads(frame[6:]) == chunk
    assert parse_event(frame) == chunk
    assert DONE == b"data: [DONE]\n\n"
    assert parse_event(DONE) is None


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b": keep-alive\n\n", None),
        (b"\n\n", None),
        (b'event: message\ndata: {"a": 1}\n\n', {"a": 1}),
        (b'data:{"a":2}\n\n', {"a": 2}),
        (b"data: [DONE]", None),
    ],
)
def test_parse_event_variants(frame: bytes, expected: object) -> None:
    assert parse_event(frame) == expected


def test_sse_text_with_newlines_stays_one_frame() -> None:
    chunk = {"choices": [{"delta": {"content": "line one\nline two\n\n"}}]}
    frame = event(chunk)
    assert frame.count(b"\n\n") == 1
    assert parse_event(frame) == chunk
