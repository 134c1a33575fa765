"""The gateway's answers as written on the wire: one write for a whole answer, its headers, and a
streamed answer stopped when its caller hangs up."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx

from tests.processes import Service
from tests.test_apim_e2e import MESSAGES, MODEL, metric, mock_and_gateway, wait_for

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
