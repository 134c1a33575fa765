"""One chat request's life: wait for admission, forward, retry, settle, answer, log.

The request's own coroutine does the forwarding once the dispatcher grants it, so no task is
spawned per request; a disconnect watcher is started only for a request that is still
waiting after a short grace period.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

from apim_server.accounting import usage_of
from apim_server.dispatcher import Closed
from apim_server.queue import QueueFull, Ticket
from apim_server.streaming import UsageTap
from apim_server.upstream import final_429, passed_back, retry_wait_s
from openai_wire.errors import APIError
from openai_wire.headers import retry_after_headers
from ratelimit.limits import Decision

if TYPE_CHECKING:
    from apim_server.gateway import Gateway

log = logging.getLogger("apim.request")

GRACE_S = 0.05
"""A request admitted within this long never needs a disconnect watcher."""
BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 8.0
SHUTDOWN_RETRY_MS = 5000
STORE_RETRY_MS = 5000
CLIENT_CLOSED = 499  # nginx's "client closed request": recorded, never seen by anyone
_cleanup: set[asyncio.Task[Any]] = set()


class _Timeout(Exception):
    pass


class _Disconnected(Exception):
    pass


async def _disconnected(receive: Receive) -> None:
    """Returns when the caller hangs up (the only message left after the body is read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def upstream_auth_failed() -> APIError:
    return APIError(
        502,
        "The upstream API refused the gateway's credentials; the gateway's operator must fix "
        "APIM_UPSTREAM_API_KEY.",
        type="server_error",
        code="upstream_auth_failed",
    )


def shutdown_error() -> APIError:
    return APIError(
        503,
        "The gateway is shutting down; retry on another instance or shortly.",
        code="shutting_down",
        headers=retry_after_headers(SHUTDOWN_RETRY_MS),
    )


class Exchange:
    """A chat request after validation: its ticket, its upstream body and headers, its figures."""

    __slots__ = (
        "attempts",
        "body",
        "deadline",
        "gw",
        "include_usage",
        "last_error",
        "model",
        "queue_s",
        "request",
        "request_id",
        "retries_left",
        "stream",
        "ticket",
        "up_headers",
        "upstream_s",
    )

    def __init__(
        self,
        gw: Gateway,
        request: Request,
        ticket: Ticket,
        body: bytes,
        stream: bool,
        include_usage: bool,
        model: str,
        request_id: str,
    ) -> None:
        self.gw = gw
        self.request = request
        self.ticket = ticket
        self.body = body
        self.stream = stream
        self.include_usage = include_usage
        self.model = model
        self.request_id = request_id
        self.up_headers = gw.upstream.headers(request.scope["headers"], request_id)
        self.deadline = ticket.arrived + gw.settings.queue_timeout_s
        self.attempts = 0
        self.queue_s = 0.0
        self.upstream_s = 0.0
        self.retries_left = gw.settings.upstream_retries
        self.last_error: Response | None = None

    # -- the whole exchange ------------------------------------------------------------------

    async def run(self) -> Response:
        """Attempts until one gives the caller's final answer."""
        requeue = False
        while True:
            try:
                decision = await self._admission(requeue)
            except (QueueFull, Closed, _Timeout, _Disconnected) as exc:
                return self._not_admitted(exc)
            self.attempts += 1
            answer = await self._attempt(decision)
            if answer is not None:
                return answer
            requeue = True

    def _not_admitted(self, exc: Exception) -> Response:
        settings = self.gw.settings
        if isinstance(exc, QueueFull):
            return self.error(
                APIError(
                    429,
                    "The gateway's queue is full; retry after the indicated time.",
                    type="requests",
                    code="queue_full",
                    headers=retry_after_headers(max(1000, self.gw.dispatcher.expected_wait_ms())),
                )
            )
        if isinstance(exc, Closed):
            return self.error(shutdown_error())
        if isinstance(exc, _Disconnected):
            return self.finish(Response(status_code=CLIENT_CLOSED))
        if self.last_error is not None:
            # A retry that ran out of time: the caller gets the upstream's last error.
            return self.finish(self.last_error)
        if self.gw.dispatcher.store_down_since is not None:
            # Not the budget's fault: nothing is admitted while the shared budget is unknown.
            return self.error(
                APIError(
                    503,
                    f"The request waited {settings.queue_timeout_s:g}s in the gateway's queue while the "
                    "limiter store was unreachable (nothing is sent without the shared budget); it was "
                    "not sent.",
                    code="store_unavailable",
                    headers=retry_after_headers(STORE_RETRY_MS),
                )
            )
        return self.error(
            APIError(
                504,
                f"The request waited {settings.queue_timeout_s:g}s in the gateway's queue without fitting "
                "the upstream's rate limits (APIM_QUEUE_TIMEOUT_S); it was not sent.",
                type="timeout",
                code="queue_timeout",
                # When it could fit: the budget's wait or the upstream's pause (after its 429s).
                headers=retry_after_headers(max(1000, self.gw.dispatcher.expected_wait_ms())),
            )
        )

    async def _attempt(self, decision: Decision) -> Response | None:
        """One forward of an admitted request: the final answer, or None to queue it again."""
        gw = self.gw
        started = time.monotonic()
        # On one clock (ours): from asking the store, which admits no earlier, to leaving.
        gw.metrics.dispatched(max(0.0, started - decision.asked_at))
        try:
            upstream = await gw.upstream.chat(self.body, self.up_headers)
        except httpx.TransportError as exc:
            gw.dispatcher.release()
            self._upstream_done("error", started)
            if isinstance(exc, httpx.TimeoutException) and not isinstance(
                exc, httpx.ConnectTimeout | httpx.PoolTimeout
            ):
                # The upstream may still be working on it: resending could charge twice.
                return self.error(
                    APIError(504, "The upstream API did not answer in time.", code="upstream_timeout")
                )
            return await self._retry_or(
                APIError(
                    502,
                    f"Could not reach the upstream API ({type(exc).__name__}).",
                    type="server_error",
                    code="upstream_unreachable",
                ).response()
            )

        status = upstream.status_code
        if self.stream and status == 200:
            return self._relay(upstream, decision, started)
        content: bytes | None = None
        try:
            content = await upstream.aread()
        except httpx.TransportError:
            pass
        finally:
            await upstream.aclose()
            gw.dispatcher.release()
        self._upstream_done(status if content is not None else "error", started)
        if content is None:
            return await self._retry_or(
                APIError(
                    502, "The upstream API closed the connection mid-answer.", code="upstream_unreachable"
                ).response()
            )
        if status in (401, 403) and gw.upstream.own_key:
            # Our key, not the caller's: the caller can do nothing about it, and the upstream's
            # message may quote part of the key.
            log.error("the upstream refused the gateway's key (APIM_UPSTREAM_API_KEY): %d", status)
            return self.error(upstream_auth_failed())
        if status == 429 and not final_429(content):
            wait_s = retry_wait_s(upstream.headers)
            gw.metrics.upstream_rate_limited.inc()
            log.warning(
                "upstream 429 for %s: admission paused %.3fs, request back at the head of the queue",
                self.request_id,
                wait_s,
            )
            gw.dispatcher.pause(wait_s)
            return None
        if status >= 500:
            return await self._retry_or(
                Response(gw.redactor.body(content), status, headers=self._passed_back(upstream))
            )
        actual = None
        if status < 300:
            actual = await gw.accounting.settle(self.ticket.cost.tokens, decision, usage_of(content))
        await gw.accounting.check_drift(upstream.headers, decision)
        headers = self._passed_back(upstream)
        headers.update(self._own_headers())
        self._record(status, actual)
        return Response(gw.redactor.body(content), status, headers=headers)

    async def _retry_or(self, failure: Response) -> Response | None:
        """After a connect error or 5xx: None (back off, then queue again) while retries last."""
        if self.retries_left <= 0:
            return self.finish(failure)
        self.retries_left -= 1
        self.last_error = failure
        await self._backoff(self.gw.settings.upstream_retries - self.retries_left)
        return None

    # -- waiting ----------------------------------------------------------------------------

    async def _admission(self, requeue: bool) -> Decision:
        """Queue (or requeue at the head) and wait for the grant, the deadline, or a hang-up."""
        dispatcher = self.gw.dispatcher
        ticket = self.ticket
        # A first wait counts from arrival, as the deadline does, so a timed-out request never
        # reports less than APIM_QUEUE_TIMEOUT_S.
        entered = time.monotonic() if requeue else ticket.arrived
        if requeue:
            dispatcher.requeue(ticket)
        else:
            decision = await dispatcher.admit_now(ticket)
            if decision is not None:
                self.queue_s += time.monotonic() - entered
                return decision
            dispatcher.submit(ticket)
        future = ticket.future
        assert future is not None
        try:
            hung_up = False
            if not future.done():
                await asyncio.wait((future,), timeout=max(0.0, min(GRACE_S, self.deadline - entered)))
            left = self.deadline - time.monotonic()
            if not future.done() and left > 0:
                watcher = asyncio.ensure_future(_disconnected(self.request.receive))
                try:
                    await asyncio.wait((future, watcher), timeout=left, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    watcher.cancel()
                hung_up = watcher.done() and not watcher.cancelled() and watcher.exception() is None
            if not future.done() and dispatcher.cancel(ticket):
                raise _Disconnected if hung_up else _Timeout
            decision = future.result()
            if hung_up:
                # Granted just as the caller left: nothing will be sent, so give the slot and
                # the tokens back (the request itself stays counted: a store cannot return it).
                dispatcher.release()
                await dispatcher.return_tokens(ticket, decision)
                raise _Disconnected
            return decision
        finally:
            self.queue_s += time.monotonic() - entered

    async def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter, never past the queue deadline."""
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        await asyncio.sleep(max(0.0, min(delay, self.deadline - time.monotonic())))

    # -- streaming -----------------------------------------------------------------------------

    def _relay(self, upstream: httpx.Response, decision: Decision, started: float) -> StreamingResponse:
        """Pass the stream through chunk by chunk; settle usage and release the slot at its end."""
        gw = self.gw
        tap = UsageTap(strip=not self.include_usage)
        scrub = gw.redactor.stream()

        async def chunks() -> AsyncIterator[bytes]:
            outcome = CLIENT_CLOSED  # unless the stream ends or the upstream breaks
            try:
                async for chunk in upstream.aiter_bytes():
                    out = scrub.feed(tap.feed(chunk))
                    if out:
                        yield out
                rest = scrub.feed(tap.flush()) + scrub.flush()
                if rest:
                    yield rest
                outcome = 200
            except httpx.TransportError:
                # Nothing can be resent mid-stream: the caller's connection is cut so it knows.
                outcome = 502
                log.warning("upstream stream broke for %s", self.request_id)
                raise
            finally:
                gw.dispatcher.release()
                self._upstream_done(200 if outcome == 200 else "error", started)
                if outcome == 200:
                    await upstream.aclose()
                    actual = await gw.accounting.settle(self.ticket.cost.tokens, decision, tap.usage)
                    await gw.accounting.check_drift(upstream.headers, decision)
                    self._record(200, actual)
                else:
                    # Cancelled (caller gone) or broken upstream: no awaiting here, close aside.
                    task = asyncio.get_running_loop().create_task(upstream.aclose())
                    _cleanup.add(task)
                    task.add_done_callback(_cleanup.discard)
                    self._record(outcome, None)

        headers = self._passed_back(upstream)
        headers.update(self._own_headers())
        return StreamingResponse(chunks(), status_code=200, headers=headers)

    # -- answering -----------------------------------------------------------------------------

    def _upstream_done(self, status: int | str, started: float) -> None:
        elapsed = time.monotonic() - started
        self.upstream_s += elapsed
        self.gw.metrics.upstream(status, elapsed)

    def _passed_back(self, upstream: httpx.Response) -> dict[str, str]:
        return self.gw.redactor.headers(passed_back(upstream.headers))

    def _own_headers(self) -> dict[str, str]:
        return {"x-request-id": self.request_id, "x-apim-queue-ms": str(round(self.queue_s * 1000))}

    def error(self, error: APIError) -> Response:
        return self.finish(error.response())

    def finish(self, response: Response, actual: int | None = None) -> Response:
        response.headers.update(self._own_headers())
        self._record(response.status_code, actual)
        return response

    def _record(self, status: int, actual: int | None) -> None:
        gw = self.gw
        gw.metrics.answered(status)
        gw.metrics.waited(self.queue_s)
        if gw.settings.log_requests:
            log.info(
                "request id=%s model=%s priority=%s stream=%s tokens_est=%d tokens_actual=%s "
                "attempts=%d queue_ms=%d upstream_ms=%d status=%d",
                self.request_id,
                self.model,
                self.ticket.priority.name.lower(),
                str(self.stream).lower(),
                self.ticket.cost.tokens,
                "-" if actual is None else actual,
                self.attempts,
                round(self.queue_s * 1000),
                round(self.upstream_s * 1000),
                status,
            )


def record_refusal(gw: Gateway, request_id: str, model: str, status: int) -> None:
    """Log and count a request answered before it reached the queue (400, 413, too large)."""
    gw.metrics.answered(status)
    if gw.settings.log_requests:
        log.info(
            "request id=%s model=%s tokens_est=- tokens_actual=- attempts=0 queue_ms=0 upstream_ms=0 "
            "status=%d",
            request_id,
            model or "-",
            status,
        )
