"""A grant owns its concurrency slot: however a request ends, cancelled while queued, while
forwarding, or with its streamed answer never sent, the slot and the budget come back."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from starlette.requests import Request
from starlette.types import Message

from apim_server.config import Settings
from apim_server.exchange import Exchange, RelayResponse
from apim_server.gateway import Gateway
from apim_server.queue import Priority, State, Ticket
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def _never() -> Message:
    await asyncio.Event().wait()
    raise AssertionError("unreachable")


def _request() -> Request:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
        "query_string": b"",
    }
    return Request(scope, _never)


@contextlib.asynccontextmanager
async def upstream_that(answer: bytes) -> AsyncIterator[str]:
    """A TCP upstream that reads a request, writes ``answer`` (maybe nothing), and then hangs."""
    hung: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        hung.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        for writer in hung:
            writer.close()
        server.close()


@contextlib.asynccontextmanager
async def gateway(upstream_url: str, **settings: object) -> AsyncIterator[Gateway]:
    gw = Gateway(Settings(upstream_url=upstream_url, log_requests=False, **settings), store=EmbeddedStore())  # type: ignore[arg-type]
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def exchange(gw: Gateway, stream: bool = False) -> Exchange:
    pool = gw.router.route("gpt-4o-mini")
    assert pool is not None
    ticket = Ticket(Priority.NORMAL, Cost(1, 10))
    return Exchange(gw, pool, _request(), ticket, BODY, stream, False, "gpt-4o-mini", "req_test")


async def until(check: object, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_request_cancelled_while_queued_leaves_the_queue_and_costs_nothing() -> None:
    async with gateway("http://127.0.0.1:9/v1", rpm_limit=1, tpm_limit=0) as gw:
        (budget,) = gw.router.budgets
        assert (await budget.acquire(Cost(1, 0))).allowed  # the minute's only request is spent
        ex = exchange(gw)
        task = asyncio.create_task(ex.run())
        await until(lambda: gw.router.depth == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ex.ticket.state is State.CANCELLED
        assert gw.router.depth == 0, "the queue no longer holds it (it was admitted a window later)"
        assert gw.router.in_flight == 0
        assert (await budget.peek()).state("tokens/minute").used == 0


async def test_a_request_cancelled_while_forwarding_gives_its_slot_back() -> None:
    async with upstream_that(b"") as url, gateway(url, max_concurrency=1) as gw:
        ex = exchange(gw)
        task = asyncio.create_task(ex.run())
        await until(lambda: gw.router.in_flight == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gw.router.in_flight == 0, "the slot came back"
        # And it is usable: the next request is admitted on it.
        second = exchange(gw)
        task = asyncio.create_task(second.run())
        await until(lambda: gw.router.in_flight == 1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert gw.router.in_flight == 0


async def test_a_streamed_answer_never_sent_gives_its_slot_back() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    async with upstream_that(head) as url, gateway(url) as gw:
        response = await exchange(gw, stream=True).run()
        assert isinstance(response, RelayResponse)
        assert gw.router.in_flight == 1

        async def gone(message: Message) -> None:
            raise OSError("the caller hung up before the first byte")

        with pytest.raises(OSError):
            await response(_request().scope, _never, gone)
        assert gw.router.in_flight == 0
        response.grant.release()  # idempotent: a second release changes nothing
        assert gw.router.in_flight == 0
