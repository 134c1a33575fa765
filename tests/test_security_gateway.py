"""The gateway's security promises: callers' keys (APIM_API_KEYS), the upstream key kept secret,
and an upstream that only settings can name."""

from __future__ import annotations

import hmac
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from apim_server.auth import CallerKeys
from apim_server.config import Settings
from openai_wire.errors import APIError
from tests.processes import Service, free_port
from tests.test_apim_e2e import MESSAGES, MODEL, chat, gateway, gateway_env, mock


@contextmanager
def logged_gateway(upstream: Service | str, log: Path, **settings: str) -> Iterator[Service]:
    """A gateway process whose whole output goes to ``log``."""
    url = upstream.v1 if isinstance(upstream, Service) else upstream
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "apim_server", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, **gateway_env(url, **settings)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        service = Service(f"http://127.0.0.1:{port}", port, proc)
        try:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{service.url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "gateway not ready"
                time.sleep(0.05)
            yield service
        finally:
            service.stop()


@pytest.fixture(scope="module")
def plain_upstream() -> Iterator[Service]:
    """An open mock shared by this module's tests: each counts what reaches it as a difference."""
    with mock() as service:
        yield service


@pytest.fixture(scope="module")
def keyed_upstream() -> Iterator[Service]:
    """A mock that knows one key only (``sk-the-real-one``), shared by this module's tests."""
    with mock(API_KEYS="sk-the-real-one") as service:
        yield service


def requests_seen(upstream: Service) -> int:
    return upstream.status()["totals"]["requests"]


# --- the upstream key never shows ---------------------------------------------------------------


def test_the_upstream_key_is_never_logged_echoed_or_returned(tmp_path: Path, keyed_upstream: Service) -> None:
    core = uuid.uuid4().hex
    secret = f"sk-canary-{core}"
    seen: list[str] = []
    log = tmp_path / "gateway.log"
    # The mock knows another key only: every forwarded request is refused with the mock's 401.
    with logged_gateway(
        keyed_upstream, log, UPSTREAM_API_KEY=secret, LOG_LEVEL="debug", LOG_REQUESTS="true"
    ) as gw:

        def record(response: httpx.Response) -> httpx.Response:
            seen.append(response.text)
            seen.extend(f"{k}: {v}" for k, v in response.headers.items())
            return response

        refused = record(chat(gw))
        assert refused.status_code >= 400
        record(chat(gw, stream=True))
        record(httpx.post(f"{gw.v1}/chat/completions", content=b"{bad", timeout=10))
        record(httpx.post(f"{gw.v1}/chat/completions", content=b"x" * 2_000_000, timeout=10))
        record(chat(gw, headers={"x-mock-fault": "500"}))
        record(httpx.get(f"{gw.v1}/models", timeout=10))
        record(httpx.get(f"{gw.url}/status", timeout=10))
        record(httpx.get(f"{gw.url}/metrics", timeout=10))
        record(httpx.get(f"{gw.url}/readyz", timeout=10))
        record(httpx.get(f"{gw.url}/no-such-path", timeout=10))
        record(httpx.get(f"{gw.url}/openapi.json", timeout=10))
    text = "\n".join(seen) + log.read_text()
    assert "request id=" in text, "the request log was captured"
    assert core not in text
    assert secret not in text


def test_an_upstream_refusing_the_gateways_key_is_a_gateway_error(
    tmp_path: Path, keyed_upstream: Service
) -> None:
    """The caller cannot fix the gateway's credentials: it gets a 502 naming the gateway's problem,
    not the upstream's 401 (which would echo part of the key)."""
    with logged_gateway(keyed_upstream, tmp_path / "log", UPSTREAM_API_KEY="sk-wrong-gateway-key-0000") as gw:
        response = chat(gw)
        assert response.status_code == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_auth_failed"
        assert "0000" not in response.text


# --- callers' keys ------------------------------------------------------------------------------------


def test_callers_need_one_of_the_configured_keys(tmp_path: Path, plain_upstream: Service) -> None:
    upstream = plain_upstream
    with logged_gateway(upstream, tmp_path / "log", API_KEYS="gk-alpha-1111,gk-bravo-2222") as gw:
        before = requests_seen(upstream)
        for headers in ({}, {"authorization": "Bearer gk-wrong"}, {"authorization": "gk-alpha-1111"}):
            response = chat(gw, headers=headers)
            assert response.status_code == 401, headers
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "invalid_api_key"
            assert "gk-alpha-1111" not in response.text
        assert requests_seen(upstream) == before, "refused callers never reach the upstream"
        for key in ("gk-alpha-1111", "gk-bravo-2222"):
            reply = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0).chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=4
            )
            assert reply.choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=gw.v1, api_key="gk-nope", max_retries=0).models.list()
        assert httpx.get(f"{gw.url}/healthz").status_code == 200


def test_the_callers_gateway_key_is_not_forwarded_upstream(tmp_path: Path) -> None:
    # The mock accepts only the upstream key: had the caller's gateway key been forwarded, 401.
    with (
        mock(API_KEYS="sk-upstream-9999") as upstream,
        logged_gateway(
            upstream, tmp_path / "log", API_KEYS="gk-alpha-1111", UPSTREAM_API_KEY="sk-upstream-9999"
        ) as gw,
    ):
        assert chat(gw, headers={"authorization": "Bearer gk-alpha-1111"}).status_code == 200


def test_open_gateway_warns_at_start(tmp_path: Path, plain_upstream: Service) -> None:
    log = tmp_path / "log"
    with logged_gateway(plain_upstream, log) as gw:
        assert chat(gw).status_code == 200
    assert "APIM_API_KEYS" in log.read_text()


def test_every_configured_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest against every key, a match or not, so timing tells nothing about them
    (timing itself cannot be asserted on a shared machine)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    keys = CallerKeys(["gk-one", "gk-two", "gk-three"])
    keys.check({"authorization": "Bearer gk-one"})
    assert len(calls) == 3, "no early exit on a match"
    calls.clear()
    with pytest.raises(APIError) as refused:
        keys.check({"authorization": "Bearer gk-on"})
    assert refused.value.status == 401
    assert len(calls) == 3
    keys.check({"api-key": "gk-three"})
    with pytest.raises(APIError):
        keys.check({})
    CallerKeys([]).check({})  # no keys: open
    assert "gk-one" not in repr(Settings(api_keys="gk-one,gk-two"))


# --- only settings name the upstream ---------------------------------------------------------------


def test_no_header_or_body_field_redirects_the_gateway(
    plain_upstream: Service, keyed_upstream: Service
) -> None:
    # Any request reaching ``other`` counts there, refused (a key it does not know) or not.
    real, other = plain_upstream, keyed_upstream
    with gateway(real) as gw:
        real_before, other_before = requests_seen(real), requests_seen(other)
        evil = other.url
        host = evil.removeprefix("http://")
        attempts = [
            chat(gw, headers={"host": host}),
            chat(gw, headers={"x-forwarded-host": host, "x-forwarded-proto": "http"}),
            chat(gw, headers={"x-upstream-url": other.v1, "x-apim-upstream": other.v1}),
            chat(gw, headers={"forwarded": f"host={host}"}),
            chat(gw, base_url=other.v1, api_base=other.v1, upstream_url=other.v1, url=other.v1),
        ]
        for response in attempts:
            assert response.status_code == 200
        # An absolute-form request target names another host.
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            body = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":4}'
            sock.sendall(
                f"POST {other.v1}/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n".encode()
                + body
            )
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.split(b" ", 2)[1] in (b"200", b"400", b"404"), reply[:100]
        assert requests_seen(other) == other_before
        assert requests_seen(real) - real_before >= len(attempts)
