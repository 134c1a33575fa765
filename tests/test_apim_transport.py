"""The gateway's keep-alive transport against small real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from apim_server.transport import LeanTransport
from tests.processes import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw asyncio HTTP/1.1 server whose behaviour each test writes."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.port = free_port()
        self._server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handler(reader, writer)
        finally:
            self.open -= 1
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
    if not head:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


def answer(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        len(body),
        body,
    )


async def requests(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The bodies of the requests on one connection, until the client hangs up."""
    while True:
        try:
            body = await read_request(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if body is None:
            return
        yield body


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async for body in requests(reader):
        writer.write(answer(b'{"echo":%d}' % len(body)))
        await writer.drain()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=LeanTransport(max_connections=4), timeout=5) as c:
        yield c


async def test_connections_are_kept_alive_and_reused(client: httpx.AsyncClient) -> None:
    async with Server(keep_alive) as server:
        for size in (1, 10, 100):
            response = await client.post(server.url, content=b"x" * size)
            assert response.status_code == 200
            assert response.json() == {"echo": size}
        assert server.connections == 1


async def test_a_connection_the_server_closed_while_idle_is_replaced(client: httpx.AsyncClient) -> None:
    async def one_answer_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()
        await asyncio.sleep(0.05)  # then hang up without having said "connection: close"

    async with Server(one_answer_then_close) as server:
        assert (await client.post(server.url, content=b"a")).status_code == 200
        await asyncio.sleep(0.2)
        assert (await client.post(server.url, content=b"b")).status_code == 200
        assert server.connections == 2


async def test_a_request_whose_connection_dropped_is_never_resent(client: httpx.AsyncClient) -> None:
    # The upstream may have read (and charged) it: a retry is the gateway's decision, through
    # the limiter, never the transport's.
    requests = 0

    async def drop_the_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        while (await read_request(reader)) is not None:
            requests += 1
            if requests == 2:
                return  # read, then hang up without an answer
            writer.write(answer(b"{}"))
            await writer.drain()

    async with Server(drop_the_second) as server:
        assert (await client.post(server.url, content=b"a")).status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"b")
        assert requests == 2
        assert (await client.post(server.url, content=b"c")).status_code == 200
        assert requests == 3
        assert server.connections == 2


async def test_a_chunked_stream_arrives_piece_by_piece(client: httpx.AsyncClient) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for i in range(3):
            data = b"data: %d\n\n" % i
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await keep_alive(reader, writer)

    async with Server(chunked) as server:
        async with client.stream("POST", server.url, content=b"{}") as response:
            pieces = [piece async for piece in response.aiter_bytes()]
        assert pieces == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n"]
        # Read to its end, the connection went back to the pool.
        assert (await client.post(server.url, content=b"x")).json() == {"echo": 1}
        assert server.connections == 1


async def test_no_answer_is_a_protocol_error_and_refused_is_a_connect_error(
    client: httpx.AsyncClient,
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)

    async with Server(hang_up) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url, content=b"{}")
    with pytest.raises(httpx.ConnectError):
        await client.post(f"http://127.0.0.1:{free_port()}/v1/chat/completions", content=b"{}")


async def test_read_timeout(client: httpx.AsyncClient) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(2)

    async with Server(silent) as server:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(server.url, content=b"{}", timeout=0.2)


async def test_the_pool_never_opens_more_than_its_size() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (await read_request(reader)) is not None:
            await asyncio.sleep(0.05)
            writer.write(answer(b"{}"))
            await writer.drain()

    async with (
        Server(slow) as server,
        httpx.AsyncClient(transport=LeanTransport(max_connections=2), timeout=5) as client,
    ):
        responses = await asyncio.gather(*(client.post(server.url, content=b"{}") for _ in range(8)))
        assert [r.status_code for r in responses] == [200] * 8
        assert server.most_open == 2


async def test_an_interim_100_continue_is_skipped_and_never_handed_to_the_next_request(
    client: httpx.AsyncClient,
) -> None:
    # The upstream sends "100 Continue" and only later its real answer. Taking the 100 as the
    # answer would return the connection to the pool with the real answer still coming, and the
    # next request on it would read the previous caller's completion.
    async def continue_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for body in requests(reader):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
            writer.write(answer(b'{"caller":"%s"}' % body))
            await writer.drain()

    async with Server(continue_then_answer) as server:
        for caller in (b"alice", b"bob", b"carol"):
            response = await client.post(server.url, content=caller)
            assert response.status_code == 200
            assert response.json() == {"caller": caller.decode()}
            assert "link" not in response.headers
        assert server.connections == 1


async def test_data_arriving_on_an_idle_connection_makes_it_unusable(client: httpx.AsyncClient) -> None:
    # Bytes nobody asked for (a late or extra answer) must never be read as the next answer.
    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async for body in requests(reader):
            writer.write(answer(b'{"caller":"%s"}' % body))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(answer(b'{"caller":"stale"}'))
            await writer.drain()

    async with Server(answer_twice) as server:
        assert (await client.post(server.url, content=b"alice")).json() == {"caller": "alice"}
        await asyncio.sleep(0.2)
        assert (await client.post(server.url, content=b"bob")).json() == {"caller": "bob"}
        assert server.connections == 2
