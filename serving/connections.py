"""Bounds on what one connection may hold or take, for both services: a uvicorn protocol.

uvicorn's httptools protocol bounds none of these: a header of any size or count is
accumulated and handed to the app, a request head or body may trickle in forever (slowloris),
a new connection that never sends a byte is never timed out (its keep-alive timer is only
armed after a first response), ``limit_concurrency`` answers a plain-text 503 and logs every
refusal, and only the last request parsed on a connection learns that its caller hung up (a
pipelined request already running never does). ``BoundedProtocol`` adds each bound and
answers in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httptools
from pydantic import Field
from pydantic_settings import BaseSettings
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from serving.lean_objects import LeanEvent, LeanPipeline

log = logging.getLogger("serving.connections")

LINGER_S = 1.0
"""After a refusal, how long the caller's remaining bytes are read and dropped before closing, so
the answer is not lost to a reset."""
FILE_LIMIT_CAP = 1 << 20
REFUSED_RETRY_MS = 1000
CONNECTION_KEY = "serving.connection"
"""The scope key under which a request finds its ``BoundedProtocol`` (``on_hang_up``)."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """Limits of one connection and of their number."""

    max_header_bytes: int = 32_768
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 2048


class ConnectionSettings(BaseSettings):
    """The bounds as settings; both services' settings classes inherit them (and their prefix)."""

    max_header_bytes: int = Field(
        32_768, ge=1024, description="Largest request line plus headers, in bytes (431 above)."
    )
    max_headers: int = Field(100, ge=1, description="Most header fields in one request (431 above).")
    header_timeout_s: float = Field(
        10, gt=0, description="Longest time to receive a request's line and headers (408, then closed)."
    )
    body_timeout_s: float = Field(
        30, gt=0, description="Longest time to receive a request's body once its headers are in (408)."
    )
    keep_alive_s: float = Field(
        5, gt=0, description="Idle connections (no request yet, or between requests) are closed after this."
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Open connections at once; beyond, 503 with retry-after (capped below the process's "
        "file limit, which is raised to its hard limit at start).",
    )

    def bounds(self, reserved_files: int = 64) -> Bounds:
        """The bounds, with the connection count kept below the open-file limit."""
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        most = self.max_connections
        if soft != resource.RLIM_INFINITY and most > soft - reserved_files:
            most = max(1, soft - reserved_files)
            log.warning(
                "max connections lowered from %d to %d: the open-file limit is %d (%d kept for the "
                "store, the upstream and logs)",
                self.max_connections,
                most,
                soft,
                reserved_files,
            )
        return Bounds(
            max_header_bytes=self.max_header_bytes,
            max_headers=self.max_headers,
            header_timeout_s=self.header_timeout_s,
            body_timeout_s=self.body_timeout_s,
            keep_alive_s=self.keep_alive_s,
            max_connections=most,
        )


def raise_file_limit() -> int:
    """Raise the soft open-file limit to the hard one (a default of 1,024 sockets is easy to
    exhaust, and then the service is unreachable); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FILE_LIMIT_CAP if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return int(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(target)


def _error_response(status: int, message: str, code: str, extra: list[tuple[bytes, bytes]]) -> bytes:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    head = [
        STATUS_LINE[status],
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
    ]
    head += [name + b": " + value + b"\r\n" for name, value in extra]
    return b"".join([*head, b"\r\n", body])


class _Burst:
    """Refusals for the connection limit, logged once when they start and once when they end."""

    __slots__ = ("refused", "since")

    def __init__(self) -> None:
        self.since: float | None = None
        self.refused = 0

    def refuse(self, open_now: int, limit: int) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "connection limit reached (%d open, limit %d): new connections get 503 until some close",
                open_now,
                limit,
            )
        self.refused += 1

    def check_end(self, open_now: int, limit: int) -> None:
        if self.since is not None and open_now < limit:
            log.warning(
                "connections back under the limit after %.1fs: %d refused with 503",
                time.monotonic() - self.since,
                self.refused,
            )
            self.since, self.refused = None, 0


SWEEP_S = 0.25
"""How often deadlines are checked: one timer per server instead of two per request."""


class _Sweeper:
    """Runs each connection's due deadline callback, every ``SWEEP_S`` while any connection is open."""

    __slots__ = ("_handle", "_state")

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._handle: asyncio.TimerHandle | None = None

    def ensure(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is None:
            self._handle = loop.call_later(SWEEP_S, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = time.monotonic()
        for conn in list(self._state.connections):
            if isinstance(conn, BoundedProtocol):
                conn.check_deadline(now)
        if self._state.connections:
            self.ensure(loop)


class _Shared:
    """What the connections of one server share."""

    __slots__ = ("burst", "shutting_down", "sweeper")

    def __init__(self, state: ServerState) -> None:
        self.burst = _Burst()
        self.sweeper = _Sweeper(state)
        self.shutting_down = False


_shared: weakref.WeakKeyDictionary[ServerState, _Shared] = weakref.WeakKeyDictionary()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that is refused."""


def _carried(app: Any, name: str) -> Any:
    """What the service's app carries as ``name`` (uvicorn may have wrapped it in middleware)."""
    for _ in range(8):
        found = getattr(app, name, None)
        if found is not None:
            return found
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


def _bounds_of(app: Any) -> Bounds:
    found = _carried(app, "bounds")
    return found if isinstance(found, Bounds) else Bounds()


_HELD_OUT = frozenset({b"transfer-encoding", b"connection"})
"""Headers whose meaning uvicorn interprets: an answer with one is written uvicorn's way."""


def _head(status: int, headers: list[tuple[bytes, bytes]], keep_alive: bool) -> tuple[bytes, int] | None:
    """An answer's status line and headers as uvicorn writes them, and its content-length (-1:
    none, the answer is streamed in chunks); None for an answer with a header uvicorn interprets,
    or without a length and with no body to chunk (204, 304). Names and values are checked as
    uvicorn does, in one search each."""
    content = [STATUS_LINE[status]]
    length = -1
    names = []
    values = []
    for raw, value in headers:
        name = raw.lower()
        if name == b"content-length":
            if length >= 0:
                return None
            length = int(value.decode())
        elif name in _HELD_OUT:
            return None
        names.append(name)
        values.append(value)
        content += (name, b": ", value, b"\r\n")
    if length < 0:
        if status in (204, 304):
            return None
        content.append(b"transfer-encoding: chunked\r\n")
    if HEADER_RE.search(b"".join(names)):
        raise RuntimeError("Invalid HTTP header name.")
    if HEADER_VALUE_RE.search(b"".join(values)):
        raise RuntimeError("Invalid HTTP header value.")
    if not keep_alive:
        content.append(b"connection: close\r\n")
    content.append(b"\r\n")
    return b"".join(content), length


class _HeadFirst:
    """A cycle's transport while the head of its streamed answer is held: uvicorn closes the
    connection when an app fails, or returns, in mid-answer, and the head must go first, so the
    caller sees an answer cut short (which clients do not resend: the upstream may have charged
    it) rather than no answer at all. Only there between an answer's start and its first piece."""

    __slots__ = ("cycle", "transport")

    def __init__(self, transport: asyncio.Transport, cycle: OneWriteCycle) -> None:
        self.transport = transport
        self.cycle = cycle

    def close(self) -> None:
        self.cycle._write_held()
        self.transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class OneWriteCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, writing an answer's head together with its body.

    Each write is a system call and, on loopback, the peer's receive work too; uvicorn writes the
    head on its own. An answer of known length goes out in one write (head and body); a streamed
    one has its head go with its first piece when that comes in the same turn of the event loop
    (else on its own at the end of that turn: never later), and its last piece with the chunked
    terminator (as uvicorn does, when the app sends it with ``more_body`` false).
    """

    held = b""
    """The head of the answer being sent, until its body comes."""
    loop: asyncio.AbstractEventLoop
    """Set by ``BoundedProtocol`` when it starts the cycle."""

    async def send(self, message: Any) -> None:
        if self.held:
            await self._send_with_head(message)
        elif (
            self.response_started
            or message["type"] != "http.response.start"
            or self.access_log
            or self.scope["method"] == "HEAD"
        ):
            await super().send(message)
        else:
            found = _head(
                message["status"], [*self.default_headers, *message.get("headers", ())], self.keep_alive
            )
            if found is None:
                await super().send(message)
                return
            if self.flow.write_paused and not self.disconnected:
                await self.flow.drain()
            if self.disconnected:
                return
            self.response_started = True
            self.waiting_for_100_continue = False
            self.held, length = found
            if length < 0:
                self.chunked_encoding = True
                self.expected_content_length = 0
                self.transport = _HeadFirst(self.transport, self)  # type: ignore[assignment]
                self.loop.call_soon(self._write_held)
            else:
                self.chunked_encoding = False
                self.expected_content_length = length

    def _take_held(self) -> bytes:
        """The head held (empty once written), with the cycle's own transport back."""
        if isinstance(self.transport, _HeadFirst):
            self.transport = self.transport.transport
        head, self.held = self.held, b""
        return head

    def _write_held(self) -> None:
        head = self._take_held()
        if head and not self.disconnected and not self.transport.is_closing():
            self.transport.write(head)

    async def _send_with_head(self, message: Any) -> None:
        body = message.get("body", b"")
        if message["type"] != "http.response.body" or (
            not self.chunked_encoding and len(body) > self.expected_content_length
        ):
            self._write_held()
            await super().send(message)  # uvicorn's error for it
            return
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        head = self._take_held()  # empty if written meanwhile (the drain took a turn)
        if self.disconnected:
            return
        more_body = message.get("more_body", False)
        if self.chunked_encoding:
            content = [head]
            if body:
                content += (b"%x\r\n" % len(body), body, b"\r\n")
            if not more_body:
                content.append(b"0\r\n\r\n")
            self.transport.write(b"".join(content))
        else:
            self.transport.write(head + body)
            self.expected_content_length -= len(body)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the bounds of ``Bounds`` (pass as ``http=``)."""

    # Ours in slots: uvicorn's attributes alone (28) then fit a key-sharing instance dict, a
    # quarter of the size of the dict all of them together took (1.6 KB per connection).
    __slots__ = (
        "_begins",
        "_burst",
        "_deadline",
        "_draining",
        "_fed",
        "_gone",
        "_hang_up",
        "_head_chunks",
        "_in_head",
        "_on_deadline",
        "_over_limit",
        "_refusal",
        "_running",
        "_shared",
        "_sweeper",
        "bounds",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.pipeline = LeanPipeline()  # type: ignore[assignment]
        self.bounds = _bounds_of(self.app)
        self.timeout_keep_alive = self.bounds.keep_alive_s
        shared = _shared.get(server_state)
        if shared is None:
            shared = _shared[server_state] = _Shared(server_state)
        self._shared = shared
        self._burst = shared.burst
        self._sweeper = shared.sweeper
        self._deadline = 0.0
        self._on_deadline: Callable[[], None] | None = None
        self._running: RequestResponseCycle | None = None
        self._over_limit = False
        self._draining = False
        self._refusal: tuple[int, str, str] | None = None
        self._in_head = False
        self._begins = 0
        self._fed = 0
        self._head_chunks = 0
        self._hang_up: Callable[[], None] | None = None
        self._gone = False  # the caller hung up, or was refused: the connection is ending

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow._is_writable_event = LeanEvent(True)  # type: ignore[assignment]
        limit = self.bounds.max_connections
        if len(self.connections) > limit:
            # Answered at its first request (a reply before it would be lost to a reset).
            self._over_limit = True
            self._burst.refuse(len(self.connections), limit)
        # uvicorn arms this only after a response: a connection that never sends would stay.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        # uvicorn tells only the last request parsed; with pipelining the one running is another.
        for cycle in (self._running, *(c for c, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._tell_hang_up()
        self._cancel_timer()
        super().connection_lost(exc)
        self._burst.check_end(len(self.connections), self.bounds.max_connections)

    def shutdown(self) -> None:
        # uvicorn asks each connection to shut down once its listeners are closed: the first
        # call is the moment to answer what the app holds (a gateway's queue). Answered any
        # earlier, a caller's next request could reach a listener still open, only to be reset.
        if not self._shared.shutting_down:
            self._shared.shutting_down = True
            begin = _carried(self.app, "begin_shutdown")
            if callable(begin):
                begin()
        super().shutdown()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn builds the cycle; its answers go out through ours (same state, one more method).
        cycle.__class__ = OneWriteCycle
        cycle.loop = self.loop  # type: ignore[attr-defined]
        cycle.message_event = LeanEvent(cycle.message_event.is_set())  # type: ignore[assignment]
        self._running = cycle
        self._hang_up = None
        super()._start_asgi_task(cycle, app)

    def on_hang_up(self, callback: Callable[[], None] | None) -> None:
        """Have ``callback`` called (once) if the caller of the request running now leaves, at
        once if it has left already; None forgets it. A waiting request learns so without a task
        reading ``receive``."""
        self._hang_up = callback
        if self._gone:
            # Left while nothing listened (the request was at the upstream, or backing off).
            self._tell_hang_up()

    def _tell_hang_up(self) -> None:
        self._gone = True
        callback = self._hang_up
        if callback is not None:
            self._hang_up = None
            callback()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            return
        self._unset_keepalive_if_required()
        began, in_head = self._begins, self._in_head
        self._fed = len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            self._invalid()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            self._invalid()
            return
        # A header still arriving is only seen by the parser: count whole chunks of a head
        # that began before this one (bounded by the limit plus one read).
        if in_head and self._in_head and self._begins == began:
            self._head_chunks += len(data)
            if self._head_chunks > self.bounds.max_header_bytes:
                self._refuse(*self._too_large())

    def _invalid(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    # -- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begins += 1
        self._in_head = True
        self._head_chunks = 0
        self._arm(self.bounds.header_timeout_s, self._head_timed_out)

    def on_headers_complete(self) -> None:
        self._cancel_timer()
        # Checked once the head is complete (it is then in memory, bounded by the chunk check in
        # data_received), and summed only when what was read for it could exceed the limit.
        b = self.bounds
        headers = self.headers
        if len(headers) > b.max_headers or (
            self._head_chunks + self._fed > b.max_header_bytes
            and len(self.url) + sum(len(n) + len(v) + 4 for n, v in headers) > b.max_header_bytes
        ):
            self._abort(self._too_large())
        if self._over_limit:
            self._abort(
                (
                    503,
                    "The server has too many open connections; retry after the indicated time.",
                    "too_many_connections",
                )
            )
        self._in_head = False
        self.scope[CONNECTION_KEY] = self  # type: ignore[typeddict-unknown-key]
        super().on_headers_complete()
        self._arm(self.bounds.body_timeout_s, self._body_timed_out)

    def on_message_complete(self) -> None:
        self._cancel_timer()
        super().on_message_complete()

    # -- refusals -------------------------------------------------------------------------------

    def _too_large(self) -> tuple[int, str, str]:
        b = self.bounds
        return (
            431,
            f"Request header fields too large: at most {b.max_header_bytes} bytes in at most "
            f"{b.max_headers} fields.",
            "headers_too_large",
        )

    def _abort(self, refusal: tuple[int, str, str]) -> None:
        self._refusal = refusal
        raise _Refused

    def _head_timed_out(self) -> None:
        if self.flow is not None and self.flow.read_paused:
            # We stopped reading (a pipelined request waits its turn): not the caller's delay.
            self._arm(self.bounds.header_timeout_s, self._head_timed_out)
            return
        self._refuse(408, "The request's headers did not arrive in time.", "request_timeout")

    def _body_timed_out(self) -> None:
        if self.flow is not None and self.flow.read_paused:
            self._arm(self.bounds.body_timeout_s, self._body_timed_out)
            return
        self._refuse(408, "The request's body did not arrive in time.", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer ``status`` (unless another answer is being written) and close the connection."""
        self._cancel_timer()
        if self.transport.is_closing() or self._draining:
            return
        running = self._running
        if self._in_head or self._over_limit:
            # A head refused: no app saw it; only an earlier answer still being written is in the way.
            writing = running is not None and running.response_started and not running.response_complete
        else:
            # A body too slow: the app may have answered already (a 401 before reading it).
            writing = self.cycle is not None and self.cycle.response_started
        for cycle in (self.cycle, running):
            # The app reading this request learns it is gone, and writes nothing more.
            if cycle is not None and not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        self._tell_hang_up()
        if not writing:
            extra = []
            if status == 503:
                extra = [
                    (b"retry-after", str(max(1, REFUSED_RETRY_MS // 1000)).encode()),
                    (b"retry-after-ms", str(REFUSED_RETRY_MS).encode()),
                ]
            self.transport.write(_error_response(status, message, code, extra))
        self._linger()

    def _linger(self) -> None:
        """Stop parsing, half-close, drop what the caller still sends, close soon after."""
        self._draining = True
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self._close)

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    # -- timers ---------------------------------------------------------------------------------

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._deadline = time.monotonic() + seconds
        self._on_deadline = callback
        self._sweeper.ensure(self.loop)

    def _cancel_timer(self) -> None:
        self._on_deadline = None

    def check_deadline(self, now: float) -> None:
        """Called by the sweeper: run the armed callback once its deadline has passed."""
        callback = self._on_deadline
        if callback is not None and now >= self._deadline:
            self._on_deadline = None
            callback()
