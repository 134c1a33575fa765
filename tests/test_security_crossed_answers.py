"""One caller's answer never reaches another: interim 1xx answers and `Expect: 100-continue`.

An upstream that answers `100 Continue` before its real answer (as any HTTP/1.1 server may, and
does when asked with `Expect: 100-continue`) once made the gateway hand the 100 to the caller as
the final answer and put the connection back in the pool with the real answer still coming: the
next caller on that connection read the previous caller's completion.
"""

from __future__ import annotations

import asyncio
import json

from tests.processes import free_port
from tests.test_apim_e2e import MODEL, gateway

CALLERS = 8


class ContinueFirstUpstream:
    """A raw HTTP/1.1 upstream that sends `100 Continue` first, then echoes the caller's text."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen_headers: list[dict[str, str]] = []
        self._server: asyncio.Server | None = None

    @property
    def v1(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")[1:]
                fields = (line.partition(":") for line in lines if line)
                headers = {k.strip().lower(): v.strip() for k, _, v in fields}
                self.seen_headers.append(headers)
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.02)
                text = json.loads(body)["messages"][0]["content"]
                answer = json.dumps(
                    {
                        "id": "chatcmpl-echo",
                        "object": "chat.completion",
                        "created": 0,
                        "model": MODEL,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
                    }
                ).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (len(answer), answer)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> ContinueFirstUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()


async def raw_call(port: int, text: str) -> tuple[int, dict]:
    """A chat request over a raw socket with `Expect: 100-continue`; the final status and body."""
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 4})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        (
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            f"expect: 100-continue\r\nconnection: close\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    writer.write(body.encode())  # a client may send the body without waiting for the 100
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    while raw.startswith(b"HTTP/1.1 1"):  # interim answers to the caller are fine: skip them
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, rest = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"transfer-encoding: chunked" in head.lower():
        chunks, rest_ = [], rest
        while rest_:
            size, _, rest_ = rest_.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            chunks.append(rest_[: int(size, 16)])
            rest_ = rest_[int(size, 16) + 2 :]
        rest = b"".join(chunks)
    return status, json.loads(rest)


async def test_each_caller_gets_its_own_answer_when_the_upstream_sends_100_continue_first() -> None:
    async with ContinueFirstUpstream() as upstream:
        # Two upstream connections for eight callers: every connection is reused several times.
        with gateway(upstream.v1, MAX_CONCURRENCY="2", UPSTREAM_RETRIES="0") as gw:
            texts = [f"caller-{i}-secret" for i in range(CALLERS)]
            results = await asyncio.gather(*(raw_call(gw.port, t) for t in texts))
    for text, (status, body) in zip(texts, results, strict=True):
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == text
    assert len(upstream.seen_headers) == CALLERS
    for headers in upstream.seen_headers:
        assert "expect" not in headers
