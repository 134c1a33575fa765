"""A lean HTTP/1.1 keep-alive transport under the shared ``httpx.AsyncClient``.

httpx's default pool scans every pooled connection on each request and polls each idle
socket (one syscall apiece) to see whether it is still usable; with a pool sized to 64-256
concurrent requests that costs more than the rest of the gateway together, and syscalls are
dear on virtualised machines. This transport keeps idle connections on a stack (the most
recently used first, so few stay warm), learns that a peer closed a connection from the event
loop instead of polling, sends each request in one write, and parses responses with
httptools (the C parser uvicorn uses). The client above it is still a plain
``httpx.AsyncClient``: same requests, responses, timeouts and exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator

import httptools
import httpx

IDLE_EXPIRY_S = 4.0
"""Drop connections idle longer than this: uvicorn closes idle keep-alive sockets after 5 s."""
HIGH_WATER = 256 * 1024
"""Stop reading from the upstream while this much body waits for a slow caller."""


class _Connection(asyncio.Protocol):
    """One TCP connection and the response currently being read from it."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.leased = True
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.status_code = 0
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.received_any = False
        self.interim = False  # parsing a 1xx answer that precedes the real one
        self.overrun = False  # bytes past the end of the answer: never reuse this connection
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.error: Exception | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.leased:
            # Nobody asked: an answer arriving now would be read as the next request's answer.
            self.overrun = True
            self._close()
            return
        self.received_any = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx.RemoteProtocolError(f"invalid HTTP response from the upstream: {exc}")
            self._close()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.error is None:
            self.error = httpx.RemoteProtocolError(
                "Server disconnected without sending a complete response."
                if self.received_any
                else "Server disconnected without sending a response."
            )
        self._wake()

    def pause_writing(self) -> None:  # a request body never outgrows the socket buffer here
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer to one request: whatever it is, it belongs to nobody.
            self.overrun = True
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.overrun:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.overrun:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows on this
            # connection. Taken as final, the real one would reach the next caller instead.
            self.interim = True
            self.headers = []
            return
        self.status_code = status
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        if self.overrun:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.overrun:
            return
        self.complete = True
        # Only answerable now: once this callback returns the parser resets for the next message.
        self.keep_alive = self._parser.should_keep_alive()

    # -- used by the transport ------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return not self.closed and self.error is None and self.keep_alive and not self.overrun

    def send(self, data: bytes) -> None:
        self._reset()
        self._parser = httptools.HttpResponseParser(self)
        assert self.transport is not None
        self.transport.write(data)

    async def wait(self, limit_s: float | None) -> None:
        """Until more of the response arrives (or the connection ends); ReadTimeout after ``limit_s``."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(limit_s, _expire, waiter) if limit_s is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def status(self) -> int:
        return self.status_code

    def take(self) -> bytes:
        data = b"".join(self.chunks) if len(self.chunks) > 1 else self.chunks[0]
        self.chunks.clear()
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self._close()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx.ReadTimeout("timed out waiting for the upstream"))


class _Body(httpx.AsyncByteStream):
    """A response body read as it arrives; the connection returns to the pool at its end."""

    def __init__(self, transport: LeanTransport, conn: _Connection, timeout: float | None) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._timeout = timeout

    async def _chunk(self, conn: _Connection) -> bytes | None:
        """The next piece of the body as it arrives (taken at once: a paused socket resumes), or
        None at its end."""
        while not conn.chunks:
            if conn.complete:
                return None
            if conn.error is not None:
                raise conn.error
            await conn.wait(self._timeout)
        return conn.take()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while (chunk := await self._chunk(conn)) is not None:
                yield chunk
        except BaseException:
            self._discard()
            raise
        self._conn = None
        self._transport.release(conn)

    async def read(self) -> bytes:
        """The whole body (what iterating yields, joined), without an async generator."""
        conn = self._conn
        if conn is None:
            return b""
        parts = []
        try:
            while (chunk := await self._chunk(conn)) is not None:
                parts.append(chunk)
        except BaseException:
            self._discard()
            raise
        self._conn = None
        self._transport.release(conn)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def aclose(self) -> None:
        self._discard()

    @property
    def ended(self) -> bool:
        """Whether the whole body has arrived and been taken."""
        conn = self._conn
        return conn is not None and conn.complete and not conn.chunks

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            self._transport.release(conn)


def body_chunks(response: httpx.Response) -> AsyncIterator[bytes]:
    """``response``'s body as it arrives: this transport's stream itself when nothing is to be
    decoded (httpx's ``aiter_bytes`` adds a decoder and three generators per chunk, and a stream
    comes in a chunk per token)."""
    stream = response.stream
    if isinstance(stream, _Body) and "content-encoding" not in response.headers:
        return stream.__aiter__()
    return response.aiter_bytes()


def body_ended(response: httpx.Response) -> bool:
    """Whether the piece of ``response``'s body just taken from ``body_chunks`` was its last
    (known only for this transport's bodies; False otherwise)."""
    stream = response.stream
    return isinstance(stream, _Body) and stream.ended


async def read_body(response: httpx.Response) -> bytes:
    """``response``'s whole body: from this transport's stream directly when nothing is to be
    decoded (httpx's ``aread`` passes each chunk through decoders and context managers)."""
    stream = response.stream
    if isinstance(stream, _Body) and "content-encoding" not in response.headers:
        return await stream.read()
    return await response.aread()


class LeanTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 (plain TCP or TLS) with at most ``max_connections`` sockets."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._ssl = httpx.create_ssl_context()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        body = await request.aread()
        head = [request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += [name, b": ", value, b"\r\n"]
        if body and "content-length" not in request.headers:
            head += [b"content-length: ", str(len(body)).encode(), b"\r\n"]
        head += [b"\r\n", body]
        return await self._round_trip(url, b"".join(head), request.extensions.get("timeout", {}))

    async def post(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: dict[str, float | None],
    ) -> httpx.Response:
        """POST ``body`` with ``headers`` (plus Host and Content-Length) without building an
        ``httpx.Request``: the forwarding path's request, whose URL and headers are ours."""
        head = [b"POST ", url.raw_path, b" HTTP/1.1\r\nhost: ", url.netloc]
        head += (b"\r\ncontent-length: ", b"%d" % len(body), b"\r\n")
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        head += (b"\r\n", body)
        return await self._round_trip(url, b"".join(head), timeouts)

    async def _round_trip(
        self, url: httpx.URL, payload: bytes, timeouts: dict[str, float | None]
    ) -> httpx.Response:
        """Send ``payload`` (a whole request) on a pooled connection; the answer once its head is in."""
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        conn = await self._acquire(key, timeouts)
        try:
            conn.send(payload)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait(timeouts.get("read"))
        except BaseException:
            # Never resent from here, not even on a kept-alive socket that seems to have
            # closed under the request: the upstream may have read (and charged) it. The
            # caller decides, and a retry there is admitted through the limiter again.
            conn.close()
            self.release(conn)
            raise
        return httpx.Response(
            conn.status(),
            headers=conn.headers,
            stream=_Body(self, conn, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def _acquire(self, key: tuple[str, str, int], timeouts: dict[str, float | None]) -> _Connection:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < IDLE_EXPIRY_S:
                conn.leased = True
                return conn
            conn.close()
            self._open -= 1
        while self._open >= self.max_connections:
            await self._wait_for_room(timeouts.get("pool"))
            idle = self._idle.get(key)
            if idle:
                return await self._acquire(key, timeouts)
        self._open += 1
        try:
            return await self._connect(key, timeouts.get("connect"))
        except BaseException:
            self._open -= 1
            self._notify()
            raise

    async def _wait_for_room(self, limit_s: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(limit_s):
                await waiter
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection became free in time") from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    async def _connect(self, key: tuple[str, str, int], limit_s: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(limit_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(key),
                    host,
                    port,
                    ssl=self._ssl if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        return conn

    def release(self, conn: _Connection) -> None:
        """Back on the stack when reusable, else closed; wakes one request waiting for room."""
        if not conn.leased:
            return
        conn.leased = False
        if conn.complete and conn.reusable:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.key, []).append(conn)
        else:
            conn.close()
            self._open -= 1
        self._notify()

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
