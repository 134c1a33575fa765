"""Secrets never leave: our upstream key is scrubbed from whatever an echoing upstream sends
back, URLs lose their credentials, /status and /metrics need the operator key when one is set,
and the mock names budgets in Redis by a hash of the API key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from pydantic import ValidationError

from apim_server.config import Settings, describe_error
from apim_server.redaction import MASK, Redactor
from monitor.client import StatusClient
from serving.urls import redacted
from tests.processes import Service, running
from tests.test_apim_e2e import MESSAGES, MODEL, chat, gateway, mock, mock_and_gateway

SECRET = f"sk-upstream-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def echo() -> Iterator[Service]:
    with running("tests.echo_upstream") as service:
        yield service


@pytest.fixture(scope="module")
def gw(echo: Service) -> Iterator[Service]:
    with gateway(echo, UPSTREAM_API_KEY=SECRET, UPSTREAM_RETRIES="0") as service:
        yield service


def leaked(response: httpx.Response) -> list[str]:
    where = [f"header {k}" for k, v in response.headers.items() if SECRET in v]
    return where + (["body"] if SECRET in response.text else [])


@pytest.mark.parametrize("status", [200, 400, 404, 422, 500, 503])
def test_an_echoing_upstream_never_hands_our_key_to_the_caller(gw: Service, status: int) -> None:
    response = chat(gw, user=f"echo-status-{status}")
    assert response.status_code == status
    assert not leaked(response)
    # The upstream did echo it: the mask shows where.
    assert MASK.decode() in response.text
    assert response.headers["openai-echo-authorization"] == f"Bearer {MASK.decode()}"


def test_a_stream_with_our_key_split_across_chunks_is_scrubbed(gw: Service) -> None:
    with httpx.stream(
        "POST",
        f"{gw.v1}/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "stream": True},
        timeout=30,
    ) as response:
        text = b"".join(response.iter_raw()).decode()
        assert response.status_code == 200
        assert SECRET not in text
        assert MASK.decode() in text
        assert not [k for k, v in response.headers.items() if SECRET in v]


def test_the_model_list_is_scrubbed(gw: Service) -> None:
    response = httpx.get(f"{gw.v1}/models", timeout=10)
    assert response.status_code == 200
    assert not leaked(response)
    assert MASK.decode() in response.text


@pytest.mark.parametrize("cut", range(1, 40))
def test_stream_redaction_finds_a_secret_cut_anywhere(cut: int) -> None:
    secret = "sk-" + "a1b2c3d4" * 4
    data = f'data: {{"k": "Bearer {secret}"}}\n\n'.encode()
    at = data.index(secret.encode()) + cut % len(secret)
    stream = Redactor([secret]).stream()
    out = stream.feed(data[:at]) + stream.feed(data[at:]) + stream.flush()
    assert out == data.replace(secret.encode(), MASK)


def test_stream_redaction_holds_back_nothing_that_cannot_begin_a_secret() -> None:
    stream = Redactor(["sk-0123456789"]).stream()
    assert stream.feed(b"data: {}\n\n") == b"data: {}\n\n"
    assert stream.feed(b"...s") == b"..."
    assert stream.feed(b"ky") == b"sky"


def test_short_values_are_not_secrets() -> None:
    assert Redactor(["abc"]).body(b"abc abc") == b"abc abc"
    assert Redactor([""]).body(b"x") == b"x"


# --- URLs ---------------------------------------------------------------------------------------


def test_userinfo_is_redacted() -> None:
    assert redacted("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted("https://user:s3cret@host/v1") == "https://user:***@host/v1"
    assert redacted("https://tok3n@host/v1") == "https://***@host/v1"
    assert redacted("https://host/v1") == "https://host/v1"


def test_status_shows_the_upstream_url_without_its_password(echo: Service) -> None:
    url = f"http://operator:pa55word@127.0.0.1:{echo.port}/v1"
    with gateway(url) as gw:
        status = httpx.get(f"{gw.url}/status", timeout=10)
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10)
    assert "pa55word" not in status.text and "pa55word" not in metrics.text
    assert status.json()["upstream"] == f"http://operator:***@127.0.0.1:{echo.port}/v1"


# --- the operator key ---------------------------------------------------------------------------


def test_status_and_metrics_need_the_operator_key() -> None:
    key = f"op-{uuid.uuid4().hex}"
    with mock_and_gateway({"OPERATOR_KEY": key}, OPERATOR_KEY=key) as (upstream, gw):
        for target in (upstream, gw):
            for path in ("/status", "/metrics"):
                for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": key}):
                    refused = httpx.get(f"{target.url}{path}", headers=headers, timeout=10)
                    assert refused.status_code == 401, (target.url, path, headers)
                    assert refused.json()["error"]["code"] == "invalid_operator_key"
                    assert key not in refused.text
                operator = {"authorization": f"Bearer {key}"}
                allowed = httpx.get(f"{target.url}{path}", headers=operator, timeout=10)
                assert allowed.status_code == 200
            # Orchestrators probe without credentials; callers are not operators either.
            assert httpx.get(f"{target.url}/healthz", timeout=10).status_code == 200
            assert httpx.get(f"{target.url}/readyz", timeout=10).status_code == 200
            assert chat(target).status_code == 200

        async def snapshot(**keys: str) -> tuple[bool, bool]:
            async with StatusClient(upstream.url, gw.url, **keys) as client:
                shot = await client.snapshot()
            return shot.mock.up, shot.apim.up

        assert asyncio.run(snapshot()) == (False, False)
        assert asyncio.run(snapshot(mock_operator_key=key, apim_operator_key=key)) == (True, True)


# --- the mock's budgets in Redis ----------------------------------------------------------------


def test_the_mock_keeps_api_keys_out_of_redis_key_names(redis_url: str, redis_prefix: str) -> None:
    api_key = f"sk-caller-{uuid.uuid4().hex}"
    with mock(API_KEYS=api_key, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix) as upstream:
        response = chat(upstream, headers={"authorization": f"Bearer {api_key}"})
        assert response.status_code == 200
        limits = httpx.get(f"{upstream.url}/status", params={"api_key": api_key}, timeout=10).json()["limits"]
    names = [k.decode() for k in redis.Redis.from_url(redis_url).scan_iter(match=f"{{{redis_prefix}:*")]
    assert names, "the mock wrote no budget to Redis"
    assert not [n for n in names if api_key in n or api_key[3:] in n]
    assert limits["rpm"]["used"] == 1


def test_header_values_beyond_latin_1_are_scrubbed_too() -> None:
    secret = "sk-0123456789"
    assert Redactor([secret]).headers({"x": f"é€ {secret}"}) == {"x": "é€ [redacted]"}


def test_a_bad_url_setting_is_named_without_its_password() -> None:
    try:
        Settings(_env_file=None, upstream_url="ftp://user:hunter2@host/v1")
    except ValidationError as exc:
        line = describe_error(exc)
    else:
        raise AssertionError("an ftp:// upstream was accepted")
    assert "APIM_UPSTREAM_URL" in line and "hunter2" not in line
