"""Caller-supplied values cannot forge log lines or fields, and a huge one is not echoed whole:
both services, real processes, their real logs."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from serving.request_log import LOG_VALUE_CAP, logged
from tests.processes import Service, running
from tests.test_apim_e2e import gateway_env, mock, mock_env, wait_for

FORGED = "2026-12-01 00:00:00,000 INFO apim.request request id=forged model=x status=200"
HUGE = 900_000


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock() as service:
        yield service


def send_hostile_requests(service: Service) -> list[httpx.Response]:
    def chat(model: str, **headers: str) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        return httpx.post(f"{service.v1}/chat/completions", json=body, headers=headers, timeout=30)

    return [
        chat(f"gpt-4o-mini\n{FORGED}"),
        chat("gpt-4o-mini", **{"x-request-id": "abc status=200 forged=1"}),
        chat("m" * HUGE),
    ]


def hang_up_mid_body(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n" + b'{"model": "gpt-4o-mini", '
        )
        time.sleep(0.3)  # the service is reading the body when the caller leaves


@pytest.fixture(scope="module", params=["mock", "gateway"])
def logged_run(
    request: pytest.FixtureRequest, upstream: Service, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, list[str]]:
    """Hostile requests and a hang-up mid-body against one service; what it logged."""
    log = tmp_path_factory.mktemp("log") / "service.log"
    if request.param == "mock":
        module, env = "llm_mock_server", mock_env(LOG_REQUESTS="true")
    else:
        module, env = "apim_server", gateway_env(upstream.v1, LOG_REQUESTS="true")
    with running(module, env=env, output=log) as service:
        forged, named, huge = send_hostile_requests(service)
        assert forged.status_code == 404
        assert named.status_code == 200
        assert huge.status_code == 404
        # The 404 names the model, but not a megabyte of it.
        assert len(huge.content) < 2_000
        assert huge.json()["error"]["code"] == "model_not_found"
        hang_up_mid_body(service)
        assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200
        wait_for(lambda: "status=499" in log.read_text(), what="the hang-up recorded as 499")
    return request.param, log.read_text().splitlines()


def test_caller_values_cannot_forge_log_lines(logged_run: tuple[str, list[str]]) -> None:
    target, lines = logged_run
    assert not [line for line in lines if line.startswith(FORGED)], "a model name forged a log line"
    assert all(len(line) < 2_000 for line in lines), max(len(line) for line in lines)
    requests = [line for line in lines if "model=" in line]
    assert len(requests) >= 3, lines
    assert any(json.dumps(f"gpt-4o-mini\n{FORGED}") in line for line in requests)
    if target == "gateway":
        assert any('id="abc status=200 forged=1"' in line for line in requests)
        assert not any("id=abc status=200" in line for line in requests)


def test_a_caller_hanging_up_mid_body_is_a_499_not_a_traceback(logged_run: tuple[str, list[str]]) -> None:
    _, lines = logged_run
    assert any("status=499" in line for line in lines)
    text = "\n".join(lines)
    assert "Traceback" not in text and "ERROR" not in text, text


def test_log_values_are_escaped_and_capped() -> None:
    assert logged("gpt-4o-mini") == "gpt-4o-mini"
    assert logged("a b") == '"a b"'
    assert logged("x=1") == '"x=1"'
    assert logged('q"') == '"q\\""'
    assert logged("line\nnext") == '"line\\nnext"'
    assert logged("\u202eevil") == '"\\u202eevil"'
    long = logged("m" * 10_000)
    assert len(long) < LOG_VALUE_CAP + 40 and "10000 chars" in long
