"""The gateway's answers as written on the wire: one write for a whole answer, its headers, a
streamed answer stopped when its caller hangs up, and a request whose caller left never sent again."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from typing import Any

import httpx

from tests.processes import Service, running
from tests.test_apim_e2e import MESSAGES, MODEL, gateway_env, metric, mock_and_gateway, wait_for

BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16}).encode()


def _first_read(service: Service) -> bytes:
    """What one read returns right after a request is sent on a fresh connection."""
    host, port = service.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
        return sock.recv(1 << 20)


def test_a_whole_answer_arrives_in_one_write_with_every_header() -> None:
    with mock_and_gateway({"RPM_LIMIT": "100000", "TPM_LIMIT": "100000000"}) as (_, gw):
        for _ in range(5):  # two writes would show as a read of the head alone, nearly always
            data = _first_read(gw)
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            assert lines[0] == "HTTP/1.1 200 OK"
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            assert int(headers["content-length"]) == len(body), "the whole body came with the head"
            assert json.loads(body)["object"] == "chat.completion"
            assert re.fullmatch(r"req_[0-9a-f]{32}", headers["x-request-id"])
            assert headers["x-apim-queue-ms"].isdigit()
            assert headers["x-apim-priority"] == "normal"
            assert headers["content-type"] == "application/json"
            assert "x-upstream-request-id" in headers
            for name in ("limit", "remaining", "reset"):
                for kind in ("requests", "tokens"):
                    assert f"x-ratelimit-{name}-{kind}" in headers


def test_request_ids_differ() -> None:
    with mock_and_gateway({}) as (_, gw):
        ids = {
            httpx.post(f"{gw.v1}/chat/completions", content=BODY, timeout=10).headers["x-request-id"]
            for _ in range(20)
        }
        assert len(ids) == 20
        assert all(re.fullmatch(r"req_[0-9a-f]{32}", i) for i in ids), ids


def test_a_stream_stops_when_its_caller_hangs_up() -> None:
    # 200 tokens at 20 per second: a 10 s stream, cut after its first chunk.
    with mock_and_gateway({"TOKENS_PER_S": "20"}) as (_, gw):
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 200, "stream": True}
        started = time.monotonic()
        with httpx.stream("POST", f"{gw.v1}/chat/completions", json=body, timeout=30) as answer:
            assert answer.status_code == 200
            next(answer.iter_bytes())
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 0, timeout=5, what="the slot back")
        wait_for(lambda: metric(gw, "apim_requests_total", status="499") == 1, timeout=5, what="a 499")
        assert time.monotonic() - started < 8, "stopped long before the upstream's stream ended"


class _RefusingOnce:
    """An upstream on a thread: it holds the first request 1 s and refuses it with a 429
    (`retry-after: 1`); every later one is answered at once. It counts what reached it."""

    OK = json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }
    ).encode()
    REFUSED = json.dumps(
        {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    ).encode()

    def __init__(self) -> None:
        self.hits = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while head := _read_head(reader):
                reader.read(int(head.get("content-length", "0")))
                self.hits += 1
                if self.hits == 1:
                    time.sleep(1.0)
                    status, extra, body = b"429 Too Many Requests", b"retry-after: 1\r\n", self.REFUSED
                else:
                    status, extra, body = b"200 OK", b"", self.OK
                conn.sendall(
                    b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n%scontent-length: %d\r\n\r\n%s"
                    % (status, extra, len(body), body)
                )


def _read_head(reader: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    line = reader.readline()
    while line and line not in (b"\r\n", b"\n"):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
        line = reader.readline()
    return headers


def test_a_caller_gone_while_its_request_was_upstream_is_not_sent_again() -> None:
    # The caller hangs up while its request is at the upstream; the upstream's 429 puts the
    # request back in the queue. Nobody is left to answer: it must not be sent (and charged) again.
    upstream = _RefusingOnce()
    with running("apim_server", env=gateway_env(upstream.url, QUEUE_TIMEOUT_S="20")) as gw:
        host, port = gw.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
            )
            wait_for(lambda: upstream.hits == 1, timeout=5, what="the request at the upstream")
        wait_for(lambda: metric(gw, "apim_requests_total", status="499") == 1, timeout=10, what="a 499")
        time.sleep(1.5)  # past the upstream's retry-after: a request still queued would go now
        assert upstream.hits == 1
        assert metric(gw, "apim_requests_total", status="200") == 0
        assert gw.status()["queue"]["depth"] == 0


def test_a_streamed_answers_head_is_not_held_back_until_its_first_token() -> None:
    # The head goes with the first piece only when that piece is there at once.
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4, "stream": True}
    with mock_and_gateway({"TTFT_MS": "1500"}) as (upstream, gw):
        for service in (upstream, gw):
            started = time.monotonic()
            with httpx.stream("POST", f"{service.v1}/chat/completions", json=payload, timeout=10) as response:
                head_s = time.monotonic() - started
                assert response.status_code == 200
                body = b"".join(response.iter_raw())
                body_s = time.monotonic() - started
            assert head_s < 1.0, f"{service.url}: the head came after {head_s:.2f} s"
            assert body_s >= 1.4, "the first token came after the time to first token"
            assert body.rstrip().endswith(b"data: [DONE]")
