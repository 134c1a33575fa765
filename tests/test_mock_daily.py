"""Daily limits reset at midnight in the configured zone: the app driven by an injected clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import httpx
import pytest

from llm_mock_server.app import MockApp, create_app
from llm_mock_server.config import MockSettings
from ratelimit.tokens import TokenCounter

ZONE = ZoneInfo("Asia/Seoul")  # UTC+9: its midnight is 15:00 UTC
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "What day is it?"}]
BODY = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10}

MakeClient = Callable[..., httpx.AsyncClient]


class Clock:
    """Milliseconds since the epoch, moved by the test."""

    def __init__(self, when: datetime) -> None:
        self.ms = int(when.timestamp() * 1000)

    def __call__(self) -> int:
        return self.ms

    def set(self, when: datetime) -> None:
        self.ms = int(when.timestamp() * 1000)


def _settings(store: str, redis_prefix: str, request: pytest.FixtureRequest, **limits: int) -> MockSettings:
    redis_url = request.getfixturevalue("redis_url") if store == "redis" else ""
    return MockSettings(
        _env_file=None,
        rpm_limit=0,
        tpm_limit=0,
        daily_reset_tz="Asia/Seoul",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        log_requests=False,
        **limits,
    )


@pytest.fixture(params=["embedded", "redis"])
def store(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_app(
    store: str, redis_prefix: str, request: pytest.FixtureRequest
) -> AsyncIterator[MakeClient]:
    apps: list[MockApp] = []

    def make(clock: Clock, **limits: int) -> httpx.AsyncClient:
        app = create_app(_settings(store, redis_prefix, request, **limits), clock=clock)
        apps.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mock")

    yield make
    for app in apps:
        await app.close()


async def test_requests_per_day_reset_at_local_midnight(make_app: MakeClient, store: str) -> None:
    clock = Clock(datetime(2025, 3, 9, 23, 58, 30, tzinfo=ZONE))
    async with make_app(clock, rpd_limit=3) as client:
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200

        denied = await client.post("/v1/chat/completions", json=BODY)
        assert denied.status_code == 429
        error = denied.json()["error"]
        assert error["message"] == (
            f"Rate limit reached for {MODEL} in organization org-mock on requests per day (RPD): "
            "Limit 3, Used 3, Requested 1. Please try again in 1m30s. "
            "Visit https://platform.openai.com/account/rate-limits to learn more."
        )
        assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
        assert denied.headers["retry-after"] == "90"
        assert denied.headers["retry-after-ms"] == "90000"

        clock.set(datetime(2025, 3, 9, 23, 59, 59, 900_000, tzinfo=ZONE))
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 429

        clock.set(datetime(2025, 3, 10, 0, 0, 0, 500_000, tzinfo=ZONE))
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
        status = (await client.get("/status")).json()
        assert status["store"] == store
        assert status["limits"]["rpd"]["used"] == 1
        assert status["limits"]["rpd"]["remaining"] == 2
        assert status["limits"]["rpd"]["reset_s"] == pytest.approx(24 * 3600 - 0.5, abs=0.01)


async def test_utc_midnight_is_not_the_reset_in_another_zone(make_app: MakeClient) -> None:
    # 23:59:30 UTC is 08:59:30 in Seoul: the UTC date changes a minute later, Seoul's does not.
    clock = Clock(datetime(2025, 3, 10, 8, 59, 30, tzinfo=ZONE))
    async with make_app(clock, rpd_limit=1) as client:
        assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
        clock.set(datetime(2025, 3, 10, 9, 0, 30, tzinfo=ZONE))
        denied = await client.post("/v1/chat/completions", json=BODY)
        assert denied.status_code == 429
        assert "requests per day (RPD)" in denied.json()["error"]["message"]
        assert "Please try again in 14h59m30s." in denied.json()["error"]["message"]


async def test_tokens_per_day_reset_at_local_midnight(make_app: MakeClient) -> None:
    cost = TokenCounter().count_messages(MESSAGES, MODEL) + 10
    clock = Clock(datetime(2025, 6, 30, 23, 0, 0, tzinfo=ZONE))
    async with make_app(clock, tpd_limit=2 * cost + 1) as client:
        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200
        denied = await client.post("/v1/chat/completions", json=BODY)
        assert denied.status_code == 429
        error = denied.json()["error"]
        assert error["type"] == "tokens"
        assert error["message"].startswith(
            f"Rate limit reached for {MODEL} in organization org-mock on tokens per day (TPD): "
            f"Limit {2 * cost + 1}, Used {2 * cost}, Requested {cost}. Please try again in 1h0m0s."
        )
        clock.set(datetime(2025, 7, 1, 0, 0, 1, tzinfo=ZONE))
        allowed = await client.post("/v1/chat/completions", json=BODY)
        assert allowed.status_code == 200
        assert allowed.json()["usage"]["total_tokens"] <= cost
