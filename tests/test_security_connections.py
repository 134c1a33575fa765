"""Connections are bounded on both services (raw sockets against real processes): header size
and count (431), time to send the headers and the body (408), idle connections, the number of
connections (503 with retry-after, logged once per burst), the file limit; and a pipelined
request whose caller hung up is withdrawn from the gateway's queue."""

from __future__ import annotations

import json
import re
import resource
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.processes import Service, running
from tests.test_apim_e2e import chat, gateway_env, mock, mock_env, wait_for

BOUNDS = {
    "MAX_HEADER_BYTES": "8192",
    "MAX_HEADERS": "20",
    "HEADER_TIMEOUT_S": "1",
    "BODY_TIMEOUT_S": "1",
    "KEEP_ALIVE_S": "1",
}
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
Starter = Callable[..., AbstractContextManager[Service]]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock() as service:
        yield service


@pytest.fixture(scope="module", params=["mock", "gateway"])
def start(request: pytest.FixtureRequest, upstream: Service) -> Starter:
    """Starts the service under test with the given settings (and its log in ``output``)."""

    @contextmanager
    def starter(output: Path | None = None, **settings: str) -> Iterator[Service]:
        if request.param == "mock":
            env = mock_env(**settings)
            module = "llm_mock_server"
        else:
            env = gateway_env(upstream.v1, **settings)
            module = "apim_server"
        with running(module, env=env, output=output) as service:
            yield service

    return starter


LOW_FILE_LIMIT = 256


@pytest.fixture(scope="module")
def bounded(start: Starter) -> Iterator[Service]:
    """The service with short bounds, started with a low soft file limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = hard == resource.RLIM_INFINITY or hard > LOW_FILE_LIMIT
    if lowered:
        resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_FILE_LIMIT, hard))
    try:
        with start(**BOUNDS) as service:
            if lowered:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                lowered = False
            yield service
    finally:
        if lowered:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read_reply(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a timeout means it kept the socket open)."""
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def error_of(reply: bytes, status: int) -> dict:
    assert reply.startswith(f"HTTP/1.1 {status} ".encode()), reply[:200]
    head, _, body = reply.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower()
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def still_serving(service: Service) -> None:
    assert httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200


def test_headers_past_the_size_limit_are_431(bounded: Service) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        sock.sendall(HEAD + b"x-big: " + b"a" * 200_000 + b"\r\n\r\n")
        assert error_of(read_reply(sock), 431)["code"] == "headers_too_large"
    still_serving(bounded)


def test_a_header_arriving_in_pieces_is_refused_before_it_ends(bounded: Service) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        sock.sendall(HEAD + b"x-big: ")
        reply = b""
        sock.settimeout(0.05)
        for _ in range(100):  # 100 x 4 KB: far past the limit, never ending the header
            try:
                sock.sendall(b"a" * 4096)
                reply = sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                break
            if reply:
                break
        reply += read_reply(sock)
    assert error_of(reply, 431)["code"] == "headers_too_large"


def test_too_many_headers_are_431(bounded: Service) -> None:
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(30))
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        sock.sendall(HEAD + many + b"content-length: %d\r\n\r\n" % len(BODY) + BODY.encode())
        assert error_of(read_reply(sock), 431)["code"] == "headers_too_large"


def trickle(sock: socket.socket, piece: bytes, times: int = 60) -> bytes:
    """Send ``piece`` every 0.2 s until the server answers or closes; what it sent."""
    sock.settimeout(0.2)
    for _ in range(times):
        try:
            sock.sendall(piece)
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return b""
        return data + read_reply(sock)
    raise AssertionError("the server kept waiting for a request that trickles in")


def test_headers_that_trickle_in_are_cut_with_408(bounded: Service) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        sock.sendall(HEAD)
        reply = trickle(sock, b"x-a: b\r\n"[:1])
    assert error_of(reply, 408)["code"] == "request_timeout"
    still_serving(bounded)


def test_a_body_that_trickles_in_is_cut_with_408(bounded: Service) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        sock.sendall(HEAD + b"content-length: 100000\r\n\r\n")
        reply = trickle(sock, b" ")
    assert error_of(reply, 408)["code"] == "request_timeout"
    still_serving(bounded)


def test_a_connection_that_never_sends_is_closed(bounded: Service) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        assert read_reply(sock) == b""


def test_an_idle_keep_alive_connection_is_closed(bounded: Service) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        reply = read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.count(b"HTTP/1.1") == 1


def test_connections_past_the_limit_get_503_logged_once(start: Starter, tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    limit = 4
    with start(output=log, MAX_CONNECTIONS=str(limit), KEEP_ALIVE_S="60") as service:
        idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(limit)]
        try:
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", service.port)) as sock:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    reply = read_reply(sock)
                assert error_of(reply, 503)["code"] == "too_many_connections"
                assert re.search(rb"\r\nretry-after: \d+\r\n", reply), reply[:300]
        finally:
            for sock in idle:
                sock.close()
        wait_for(lambda: httpx.get(f"{service.url}/healthz", timeout=5).status_code == 200)
    text = log.read_text()
    assert text.count("connection limit reached") == 1, text
    assert text.count("back under the limit") == 1, text
    assert "3 refused" in text


def test_the_file_limit_is_raised_to_the_hard_limit(bounded: Service) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= LOW_FILE_LIMIT:
        pytest.skip("the hard file limit leaves nothing to raise")
    limits = Path(f"/proc/{bounded.process.pid}/limits").read_text()
    match = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits)
    assert match is not None
    assert int(match[1]) > LOW_FILE_LIMIT
    assert match[1] == match[2] or int(match[1]) == 1 << 20


# --- pipelining -----------------------------------------------------------------------------------


def test_pipelined_requests_whose_caller_hung_up_are_never_sent(upstream: Service) -> None:
    """Three requests in one write on one connection, then the caller leaves: the one queued
    behind the exhausted budget is withdrawn, and none reaches the upstream."""
    # A timeout past the window's 60.5 s, so the request behind the spent budget queues.
    env = gateway_env(upstream.v1, RPM_LIMIT="1", QUEUE_TIMEOUT_S="120")
    with running("apim_server", env=env) as gw:
        assert chat(gw).status_code == 200  # the minute's one request
        sent = upstream.status()["totals"]["requests"]
        one = HEAD + b"content-length: %d\r\n\r\n" % len(BODY) + BODY.encode()
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.sendall(one * 3)
            wait_for(lambda: gw.status()["queue"]["depth"] == 1, what="the first request queued")
        wait_for(lambda: gw.status()["queue"]["depth"] == 0, what="the queued request withdrawn")
        status = gw.status()
        assert status["queue"]["in_flight"] == 0
        assert status["limits"]["rpm"]["used"] == 1
        assert upstream.status()["totals"]["requests"] == sent
