"""serving.connections.OneWriteCycle on the wire: streamed answers as uvicorn would write them,
with their head held only within one turn of the event loop, and never lost when the app fails
or stops mid-answer (real uvicorn on loopback, raw sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from serving.connections import BoundedProtocol
from tests.processes import free_port

App = Callable[[Any, Any, Any], Awaitable[None]]
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


@asynccontextmanager
async def serving(app: App) -> AsyncIterator[int]:
    port = free_port()
    # As both services run it: without an access log (uvicorn then writes every answer itself).
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=BoundedProtocol, log_level="critical", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn's server says it has started by a flag
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def answer(port: int, method: bytes = b"GET") -> bytes:
    """Everything the server writes to one request, until it closes or 1 s passes quietly."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(method + b" / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    data = b""
    try:
        while chunk := await asyncio.wait_for(reader.read(65536), 1):
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


async def test_a_stream_is_chunked_as_uvicorn_writes_it() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await asyncio.sleep(0.05)  # the next piece comes in a later turn
        await send({"type": "http.response.body", "body": b"world", "more_body": False})

    async with serving(app) as port:
        data = await answer(port)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n"


async def test_a_head_comes_even_when_the_app_fails_or_stops_before_its_body() -> None:
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        raise RuntimeError("the upstream broke")

    async def stops(scope: Any, receive: Any, send: Any) -> None:
        await send(START)

    for app in (fails, stops):
        async with serving(app) as port:
            data = await answer(port)
        # An answer cut short (clients do not resend it), not a connection closed unanswered.
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), (app.__name__, data)
        assert b"0\r\n\r\n" not in data, "never an end that says the answer was whole"


async def test_answers_without_a_body_to_chunk_are_written_as_uvicorn_writes_them() -> None:
    async def no_content(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def head_request(scope: Any, receive: Any, send: Any) -> None:
        await send(START)
        await send({"type": "http.response.body", "body": b"ignored"})

    async with serving(no_content) as port:
        data = await answer(port)
    assert data.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"transfer-encoding" not in data and data.endswith(b"\r\n\r\n")
    async with serving(head_request) as port:
        data = await answer(port, b"HEAD")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\n")
    assert b"ignored" not in data
