"""The gateway's dispatch lag is measured on its own clock: a limiter store whose clock is an
hour off (Redis on another host) does not make every request look an hour late."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from starlette.requests import Request

from apim_server.chat import chat_completions
from apim_server.config import Settings
from apim_server.gateway import Gateway
from ratelimit import EmbeddedStore
from tests.processes import Service
from tests.test_apim_e2e import mock

HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock() as service:
        yield service


def chat_request(body: bytes) -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return Request(scope, receive)


@pytest.mark.parametrize("skew_ms", [-HOUR_MS, HOUR_MS])
async def test_dispatch_lag_ignores_the_store_clock(upstream: Service, skew_ms: int) -> None:
    settings = Settings(_env_file=None, upstream_url=upstream.v1, log_requests=False)
    store = EmbeddedStore(clock=lambda: time.time_ns() // 1_000_000 + skew_ms)
    gw = Gateway(settings, store=store)
    await gw.start()
    try:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        response = await chat_completions(gw, chat_request(json.dumps(body).encode()))
        assert response.status_code == 200
        assert len(gw.metrics.recent_lags) == 1
        assert 0 <= gw.metrics.max_lag < 5, "lag measured against the store's clock"
    finally:
        await gw.stop()
