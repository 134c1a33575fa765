"""What the mock charges (estimate, excess, opt-in refund) and how it paces answers, in process."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from llm_mock_server.app import create_app
from llm_mock_server.config import MockSettings
from ratelimit.tokens import TokenCounter

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Count my tokens, please."}]
PROMPT = TokenCounter().count_messages(MESSAGES, MODEL)


@asynccontextmanager
async def mock(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(MockSettings(_env_file=None, log_requests=False, **settings))
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://mock"
        ) as client:
            yield client
    finally:
        await app.close()


async def tokens_used(client: httpx.AsyncClient) -> int:
    return int((await client.get("/status")).json()["limits"]["tpm"]["used"])


async def test_estimate_is_charged_and_not_refunded_by_default() -> None:
    async with mock(tpm_limit=100_000) as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 900}
        )
        assert reply.json()["usage"]["completion_tokens"] < 900
        assert int(reply.headers["x-ratelimit-remaining-tokens"]) == 100_000 - PROMPT - 900
        assert await tokens_used(client) == PROMPT + 900


async def test_unused_estimate_is_refunded_when_configured() -> None:
    async with mock(tpm_limit=100_000, refund_unused=True) as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 900}
        )
        assert await tokens_used(client) == reply.json()["usage"]["total_tokens"]


async def test_usage_above_the_estimate_is_charged() -> None:
    # The max rule charges max(max_tokens, characters / 4): less than prompt + completion here.
    async with mock(tpm_limit=100_000, cost_rule="max") as client:
        reply = await client.post(
            "/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5}
        )
        usage = reply.json()["usage"]
        assert usage["completion_tokens"] == 5
        estimate = max(5, math.ceil(len(MESSAGES[0]["content"]) / 4))
        assert estimate < PROMPT + 5
        assert int(reply.headers["x-ratelimit-remaining-tokens"]) == 100_000 - estimate
        assert await tokens_used(client) == usage["total_tokens"] == PROMPT + 5


async def test_default_max_tokens_is_used_in_the_cost() -> None:
    async with mock(tpm_limit=100_000, default_max_tokens=333) as client:
        await client.post("/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES})
        assert await tokens_used(client) == PROMPT + 333


async def test_n_choices_multiply_the_completion_estimate() -> None:
    async with mock(tpm_limit=100_000) as client:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 50, "n": 3}
        await client.post("/v1/chat/completions", json=body)
        assert await tokens_used(client) == PROMPT + 150


async def _stream_text(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    text = []
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                for choice in json.loads(line[6:])["choices"]:
                    text.append(choice["delta"].get("content") or "")
    return "".join(text)


async def test_paced_answers_are_the_same_answers_and_wait() -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10}
    async with mock() as instant:
        plain = (await (await instant.post("/v1/chat/completions", json=body)).aread()).decode()
        streamed = await _stream_text(instant, body)
    async with mock(ttft_ms=150, tokens_per_s=200) as paced:
        started = time.monotonic()
        paced_plain = (await (await paced.post("/v1/chat/completions", json=body)).aread()).decode()
        plain_wait = time.monotonic() - started
        started = time.monotonic()
        paced_stream = await _stream_text(paced, body)
        stream_wait = time.monotonic() - started
    assert json.loads(paced_plain)["choices"] == json.loads(plain)["choices"]
    assert paced_stream == streamed == json.loads(plain)["choices"][0]["message"]["content"]
    # Time to first token plus nine more tokens at 200/s: the answers cannot come sooner.
    assert plain_wait >= 0.19
    assert stream_wait >= 0.19
