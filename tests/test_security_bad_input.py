"""Hostile and broken chat requests, against the mock and the gateway: each is a 4xx in OpenAI's
shape, neither process falls over, and the gateway forwards none of them (no budget spent)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.processes import Service
from tests.test_apim_e2e import gateway, mock

MODEL = "gpt-4o-mini"
GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
LIMIT = 65_536
JSON = {"content-type": "application/json"}


def nested(depth: int) -> bytes:
    return json.dumps(GOOD)[:-1].encode() + b',"extra":' + b"[" * depth + b"]" * depth + b"}"


def with_body(**fields: Any) -> dict[str, Any]:
    return {"content": json.dumps({**GOOD, **fields}).encode(), "headers": JSON}


CASES: dict[str, tuple[int, dict[str, Any]]] = {
    "malformed json": (400, {"content": b'{"model": "gpt-4o-mini", "messages": [', "headers": JSON}),
    "empty body": (400, {"content": b"", "headers": JSON}),
    "json array": (400, {"content": b"[1, 2, 3]", "headers": JSON}),
    "json string": (400, {"content": b'"hello"', "headers": JSON}),
    "text/plain": (400, {"content": json.dumps(GOOD).encode(), "headers": {"content-type": "text/plain"}}),
    "form": (400, {"data": {"model": MODEL, "messages": "hi"}}),
    "invalid utf-8": (
        400,
        {
            "content": b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff\xfe\xfa"}]}',
            "headers": JSON,
        },
    ),
    "nested 30000 deep": (400, {"content": nested(30_000), "headers": JSON}),
    "nested 5000 deep": (400, {"content": nested(5_000), "headers": JSON}),
    "max_tokens negative": (400, with_body(max_tokens=-1)),
    "max_tokens zero": (400, with_body(max_tokens=0)),
    "max_tokens 10**12": (400, with_body(max_tokens=10**12)),
    "max_tokens 10**40": (400, with_body(max_tokens=10**40)),
    "max_tokens float": (400, with_body(max_tokens=1e300)),
    "max_completion_tokens negative": (400, with_body(max_completion_tokens=-5)),
    "max_completion_tokens 2**63": (400, with_body(max_completion_tokens=2**63)),
    "n huge": (400, with_body(n=10**20)),
    "max_tokens a string": (400, with_body(max_tokens="5")),
    "temperature a boolean": (400, with_body(temperature=True)),
    "stream a string": (400, with_body(stream="yes")),
    "messages empty": (400, with_body(messages=[])),
    "message not an object": (400, with_body(messages=["hi"])),
    "unknown role": (400, with_body(messages=[{"role": "root", "content": "hi"}])),
    "user content null": (400, with_body(messages=[{"role": "user", "content": None}])),
    "user content missing": (400, with_body(messages=[{"role": "user"}])),
    "system content null": (
        400,
        with_body(messages=[{"role": "system", "content": None}, GOOD["messages"][0]]),
    ),
    "content a number": (400, with_body(messages=[{"role": "user", "content": 5}])),
    "model a number": (400, with_body(model=4)),
    "model empty": (400, with_body(model="")),
    "n zero": (400, with_body(n=0)),
    "n a fraction": (400, with_body(n=1.5)),
    "max_tokens a fraction": (400, with_body(max_tokens=300.5)),
    "temperature NaN": (
        400,
        {"content": json.dumps(GOOD)[:-1].encode() + b',"temperature":NaN}', "headers": JSON},
    ),
    "body past the limit": (
        413,
        {"content": json.dumps({**GOOD, "pad": "x" * LIMIT}).encode(), "headers": JSON},
    ),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock(RPM_LIMIT="1000", TPM_LIMIT="1000000", MAX_BODY_BYTES=str(LIMIT)) as service:
        yield service


@pytest.fixture(scope="module")
def gw(upstream: Service) -> Iterator[Service]:
    with gateway(upstream, RPM_LIMIT="1000", TPM_LIMIT="1000000", MAX_BODY_BYTES=str(LIMIT)) as service:
        yield service


@pytest.fixture(params=["mock", "gateway"])
def target(request: pytest.FixtureRequest, upstream: Service) -> Service:
    return upstream if request.param == "mock" else request.getfixturevalue("gw")


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text[:300]
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]


def upstream_requests(upstream: Service) -> int:
    return int(upstream.status()["totals"]["requests"])


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_is_a_4xx_in_openai_shape(case: str, target: Service, upstream: Service) -> None:
    status, request = CASES[case]
    before = upstream_requests(upstream)
    response = httpx.post(f"{target.v1}/chat/completions", timeout=30, **request)
    assert_openai_error(response, status)
    if target is not upstream:
        assert upstream_requests(upstream) == before, "the gateway forwarded a request it should refuse"
        assert target.status()["queue"]["depth"] == 0
    # Still serving.
    assert httpx.post(f"{target.v1}/chat/completions", json=GOOD, timeout=30).status_code == 200


def test_body_past_the_limit_without_content_length_is_413(target: Service) -> None:
    """A chunked body declares no size: the limit must hold while reading, not only on the header."""

    def chunks() -> Iterator[bytes]:
        yield json.dumps(GOOD)[:-1].encode() + b', "pad": "'
        for _ in range(LIMIT // 4096 + 2):
            yield b"x" * 4096
        yield b'"}'

    response = httpx.post(f"{target.v1}/chat/completions", content=chunks(), headers=JSON, timeout=30)
    assert "content-length" not in response.request.headers
    assert_openai_error(response, 413)


def test_nesting_just_under_the_parser_limit_is_answered(target: Service) -> None:
    """A body that parses, but deep: whatever the service says, it is not a 5xx."""
    response = httpx.post(f"{target.v1}/chat/completions", content=nested(900), headers=JSON, timeout=30)
    assert response.status_code < 500, response.text[:300]


def test_garbage_content_length_is_refused(target: Service) -> None:
    """A Content-Length that is no number never reaches the app as a body of some size."""
    with socket.create_connection(("127.0.0.1", target.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: 12abc\r\n\r\n{}"
        )
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:100]
    assert httpx.get(f"{target.url}/healthz", timeout=5).status_code == 200


def raw_exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize(
    "headers",
    [b"x-big: " + b"a" * 100_000 + b"\r\n", b"".join(b"x-h%d: v\r\n" % i for i in range(150))],
    ids=["one header of 100 KB", "150 headers"],
)
def test_hostile_headers_are_431_in_openai_shape(target: Service, upstream: Service, headers: bytes) -> None:
    before = upstream_requests(upstream)
    body = json.dumps(GOOD).encode()
    reply = raw_exchange(
        target.port,
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + headers
        + b"content-length: %d\r\n\r\n" % len(body)
        + body,
    )
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    error = json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == "headers_too_large"
    if target is not upstream:
        assert upstream_requests(upstream) == before
    assert httpx.post(f"{target.v1}/chat/completions", json=GOOD, timeout=30).status_code == 200


def test_a_huge_model_name_is_not_echoed(target: Service) -> None:
    response = httpx.post(f"{target.v1}/chat/completions", json={**GOOD, "model": "m" * 60_000}, timeout=30)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert len(response.content) < 2_000
