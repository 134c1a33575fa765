"""One API request's life (chat, embeddings, responses, completions): wait for admission in
its pool, forward, retry or fail over, settle, answer, log.

The request's own coroutine does the forwarding once the dispatcher grants it, so no task is
spawned per request; while it waits it holds no timer or task either (see ``_granted``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import httpx
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from apim_server.accounting import usage_of
from apim_server.budget import Budget, Deployment
from apim_server.deadline import EXPECTED_HEADER, Unfittable, predict, timeout_s
from apim_server.dispatcher import Closed
from apim_server.grant import Grant
from apim_server.queue import PRIORITY_NAMES, QueueFull, Ticket
from apim_server.streaming import UsageTap
from apim_server.transport import body_chunks, body_ended, read_body
from apim_server.upstream import capacity_429, final_429, passed_back, passed_back_raw, retry_wait_s
from openai_wire.errors import APIError
from openai_wire.headers import retry_after_headers
from ratelimit.limits import Decision
from serving.connections import CONNECTION_KEY

if TYPE_CHECKING:
    from apim_server.gateway import Gateway
    from apim_server.routing import Pool

log = logging.getLogger("apim.request")
PRIORITY_LINES = tuple(name.encode() for name in PRIORITY_NAMES)
EXPECTED_LINE = EXPECTED_HEADER.encode()

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


class RelayResponse:
    """A streamed answer, relayed piece by piece (``content`` yields each with whether it is the
    last) until it ends or the caller hangs up; gives its grant's slot back however it ends, even
    when the caller is gone before the first piece.

    Starlette's ``StreamingResponse`` would do the same with a task group per answer (a tenth of
    a streamed request's CPU): here one watcher task cancels the relay when the caller leaves.
    """

    def __init__(
        self,
        grant: Grant,
        content: AsyncGenerator[tuple[bytes, bool], None],
        raw_headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.grant = grant
        self.body_iterator = content
        self.status_code = 200
        self.raw_headers = raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        finished = False

        def hung_up(watcher: asyncio.Task[None]) -> None:
            if not finished and not watcher.cancelled() and watcher.exception() is None:
                relay.cancel()

        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(hung_up)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk, last in self.body_iterator:
                # The last piece carries the end of the answer: one write, not two.
                finished = finished or last
                await send({"type": "http.response.body", "body": chunk, "more_body": not last})
            if not finished:
                finished = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not watcher.done() or watcher.cancelled():
                raise  # not the caller leaving
            relay.uncancel()  # the caller left: nothing more to answer
        finally:
            finished = True
            watcher.cancel()
            await self.body_iterator.aclose()  # records the end if the relay stopped early
            self.grant.release()


class Answer:
    """A whole answer from header lines already encoded: what Starlette's ``Response`` sends,
    without the header dict it builds and encodes per request (the forwarding path's answer)."""

    __slots__ = ("body", "raw_headers", "status_code")

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.body = body
        raw_headers.append((b"content-length", b"%d" % len(body)))
        self.raw_headers = raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


class Exchange:
    """A request after validation: its pool, ticket, upstream body and headers, figures."""

    __slots__ = (
        "attempts",
        "body",
        "deadline",
        "expected_ms",
        "gw",
        "hung_up",
        "include_usage",
        "last_error",
        "model",
        "path",
        "pool",
        "queue_s",
        "request",
        "request_id",
        "retries_left",
        "stream",
        "ticket",
        "timeout_s",
        "trace",
        "up_headers",
        "upstream_s",
    )

    def __init__(
        self,
        gw: Gateway,
        pool: Pool,
        request: Request,
        ticket: Ticket,
        body: bytes,
        stream: bool,
        include_usage: bool,
        model: str,
        request_id: str,
        path: str = "/v1/chat/completions",
    ) -> None:
        self.gw = gw
        self.path = path  # the endpoint's, under /v1: each upstream maps it to its own URL
        self.pool = pool
        self.request = request
        self.ticket = ticket
        self.body = body
        self.stream = stream
        self.include_usage = include_usage
        self.model = model
        self.request_id = request_id
        self.up_headers: tuple[Deployment, list[tuple[bytes, bytes]]] | None = None
        self.timeout_s = gw.settings.queue_timeout_s
        self.deadline = ticket.arrived + self.timeout_s
        self.expected_ms: int | None = None  # the wait predicted at arrival
        self.attempts = 0
        self.queue_s = 0.0
        self.upstream_s = 0.0
        self.retries_left = gw.settings.upstream_retries
        self.last_error: Response | None = None
        self.hung_up = False  # the caller left while waiting
        self.trace = (
            None
            if gw.tracing is None
            else gw.tracing.request(request.headers, path, model, request_id, ticket.arrived)
        )

    # -- the whole exchange ------------------------------------------------------------------

    async def run(self) -> Response | Answer | RelayResponse:
        """Attempts until one gives the caller's final answer."""
        try:
            self.timeout_s = timeout_s(self.request.headers, self.gw.settings.queue_timeout_s)
        except APIError as error:
            return self.error(error)
        self.deadline = self.ticket.deadline = self.ticket.arrived + self.timeout_s
        unserved: Grant | None = None
        while True:
            try:
                grant = await self._admission(unserved)
            except (QueueFull, Closed, _Timeout, _Disconnected, Unfittable) as exc:
                return self._not_admitted(exc)
            if self.trace is not None:
                self.trace.admitted(grant, self.queue_s)
            self.attempts += 1
            try:
                answer = await self._attempt(grant)
            except BaseException:
                grant.release()  # cancelled mid-forward: the slot comes back (idempotent)
                raise
            if answer is not None:
                return answer
            unserved = grant

    def _not_admitted(self, exc: Exception) -> Response:
        if isinstance(exc, QueueFull):
            return self.error(
                APIError(
                    429,
                    "The gateway's queue is full; retry after the indicated time.",
                    type="requests",
                    code="queue_full",
                    headers=retry_after_headers(max(1000, self.pool.dispatcher.expected_wait_ms())),
                )
            )
        if isinstance(exc, Closed):
            return self.error(shutdown_error())
        if isinstance(exc, Unfittable):
            return self.error(exc.error(self.model))
        if isinstance(exc, _Disconnected):
            return self.finish(Response(status_code=CLIENT_CLOSED))
        if self.last_error is not None:
            # A retry that ran out of time: the caller gets the upstream's last error.
            return self.finish(self.last_error)
        if self.gw.health.unreachable:
            # Not the budget's fault: nothing is admitted while the shared budget is unknown.
            return self.error(
                APIError(
                    503,
                    f"The request waited {self.timeout_s:g}s in the gateway's queue while the "
                    "limiter store was unreachable (nothing is sent without the shared budget); it was "
                    "not sent.",
                    code="store_unavailable",
                    headers=retry_after_headers(STORE_RETRY_MS),
                )
            )
        return self.error(
            APIError(
                504,
                f"The request waited {self.timeout_s:g}s in the gateway's queue without fitting "
                "the upstream's rate limits (x-apim-timeout-ms or APIM_QUEUE_TIMEOUT_S); it was not sent.",
                type="timeout",
                code="queue_timeout",
                # When it could fit: the budget's wait or the upstream's pause (after its 429s).
                # The gateway already waited on the caller's behalf: an SDK retry would only queue
                # for another whole timeout, so the SDK is told not to (the caller decides).
                headers=retry_after_headers(max(1000, self.pool.dispatcher.expected_wait_ms()))
                | {"x-should-retry": "false"},
            )
        )

    def _headers_for(self, deployment: Deployment) -> list[tuple[bytes, bytes]]:
        found = self.up_headers
        if found is None or found[0] is not deployment:
            found = self.up_headers = (
                deployment,
                deployment.upstream.headers(self.request.scope["headers"], self.request_id),
            )
        return found[1]

    async def _attempt(self, grant: Grant) -> Response | Answer | RelayResponse | None:
        """One forward of an admitted request: the final answer, or None to queue it again."""
        gw = self.gw
        decision = grant.decision
        budget = grant.budget
        deployment = budget.deployment
        started = time.monotonic()
        # On one clock (ours): from asking the store, which admits no earlier, to leaving.
        gw.metrics.dispatched(max(0.0, started - decision.asked_at))
        upstream = await self._send(grant, started)
        if not isinstance(upstream, httpx.Response):
            return upstream

        status = upstream.status_code
        if status < 500 and status != 429:  # a 429's body says first whether it is evidence
            gw.following.observe(budget, upstream.headers, decision, self.model)
        if self.stream and status == 200:
            deployment.answered()
            return self._relay(upstream, grant, started)
        content: bytes | None = None
        try:
            content = await read_body(upstream)
        except httpx.TransportError:
            pass
        finally:
            await upstream.aclose()
            grant.release()
        self._upstream_done(status if content is not None else "error", started, budget)
        if content is None:
            return await self._retry_or(
                grant,
                APIError(
                    502, "The upstream API closed the connection mid-answer.", code="upstream_unreachable"
                ).response(),
                "connection closed mid-answer",
            )
        if status < 500:
            deployment.answered()
        if status in (401, 403) and deployment.upstream.own_key:
            # Our key, not the caller's: the caller can do nothing about it, and the upstream's
            # message may quote part of the key.
            log.error("the upstream refused the gateway's key (APIM_UPSTREAM_API_KEY): %d", status)
            return self.error(upstream_auth_failed())
        if status == 429 and self._rate_limited(budget, decision, upstream.headers, content):
            return None
        if status >= 500:
            return await self._retry_or(
                grant,
                Response(gw.redactor.body(content), status, headers=self._passed_back(upstream)),
                f"HTTP {status}",
                retry_wait_s(upstream.headers) if "retry-after" in upstream.headers else None,
            )
        actual = None
        if status < 300:
            actual = await gw.accounting.settle(
                budget, self.ticket.cost.tokens, decision, usage_of(content), grant.charge
            )
        headers = self._answer_lines(upstream)
        self._record(status, actual)
        return Answer(status, headers, gw.redactor.body(content))

    async def _send(self, grant: Grant, started: float) -> httpx.Response | Response | None:
        """The upstream's answer (headers read), or what the caller gets when it could not be
        reached (None: queued again)."""
        deployment = grant.budget.deployment
        try:
            up = deployment.upstream
            body = up.body_for(self.path, self.model, self.body)
            url = up.url(self.path, self.model)
            headers = self._headers_for(deployment)
            if self.trace is not None:
                headers = self.trace.upstream(deployment.name, str(url), headers)
            return await up.post(url, body, headers)
        except httpx.TransportError as exc:
            grant.release()
            self._upstream_done("error", started, grant.budget)
            if isinstance(exc, httpx.TimeoutException) and not isinstance(
                exc, httpx.ConnectTimeout | httpx.PoolTimeout
            ):
                # The upstream may still be working on it: resending could charge twice.
                return self.error(
                    APIError(504, "The upstream API did not answer in time.", code="upstream_timeout")
                )
            return await self._retry_or(
                grant,
                APIError(
                    502,
                    f"Could not reach the upstream API ({type(exc).__name__}).",
                    type="server_error",
                    code="upstream_unreachable",
                ).response(),
                type(exc).__name__,
            )

    def _rate_limited(
        self, budget: Budget, decision: Decision, headers: httpx.Headers, content: bytes
    ) -> bool:
        """An upstream 429: what it says of the upstream's figures is followed, unless it is about
        the upstream's own load (capacity). True when it is waited out: the budget paused, the
        request back at the head of its queue; False for a final one, which the caller gets."""
        gw = self.gw
        capacity = capacity_429(content)
        if capacity:
            gw.following.capacity(budget)
        else:
            gw.following.observe(budget, headers, decision, self.model, refused=self.ticket.cost)
        if final_429(content):
            return False
        wait_s = retry_wait_s(headers)
        gw.metrics.upstream_paused(budget)
        log.warning(
            "upstream %s429 for %s on %s: that budget paused %.3fs, request back at the head of its queue",
            "capacity " if capacity else "",
            self.request_id,
            budget.name,
            wait_s,
        )
        budget.pause(wait_s)
        return True

    async def _retry_or(
        self, grant: Grant, failure: Response, reason: str, wait_s: float | None = None
    ) -> Response | None:
        """After a connect error or 5xx: None (queue again) while retries last, else the failure.

        When another deployment of the pool is in service this is a failover, not a retry: the
        failed deployment cools (or is taken out) and the request goes straight back to the head
        of its queue, where the other member takes it; no retry of the caller's is spent.
        """
        self.last_error = failure
        if self.pool.others_in_service(grant):
            attempt = grant.budget.deployment.failures + 1
            grant.budget.deployment.failed(reason, wait_s if wait_s is not None else _backoff_s(attempt))
            return None
        if self.retries_left <= 0:
            return self.finish(failure)
        self.retries_left -= 1
        await self._backoff(self.gw.settings.upstream_retries - self.retries_left)
        return None

    # -- waiting ----------------------------------------------------------------------------

    async def _admission(self, unserved: Grant | None) -> Grant:
        """Queue (or, after the ``unserved`` grant, requeue at the head) and wait for the grant,
        the deadline, or a hang-up.

        However this coroutine ends, the ticket is never left behind: cancelled while queued, it
        is withdrawn; cancelled once granted, the grant is withdrawn (slot and tokens back).
        """
        dispatcher = self.pool.dispatcher
        ticket = self.ticket
        # A first wait counts from arrival, as the deadline does, so a timed-out request never
        # reports less than APIM_QUEUE_TIMEOUT_S.
        requeue = unserved is not None
        entered = time.monotonic() if requeue else ticket.arrived
        if unserved is not None:
            await dispatcher.unserved(unserved)
            dispatcher.requeue(ticket)
        else:
            grant = await dispatcher.admit_now(ticket)
            if grant is not None:
                self.queue_s += time.monotonic() - entered
                self.expected_ms = 0
                return grant
            await self._predict()
            dispatcher.submit(ticket)
        future = ticket.future
        assert future is not None
        try:
            grant = await self._granted(future, entered)
            if not requeue and self.expected_ms is not None:
                self.gw.metrics.predicted(self.expected_ms / 1000, time.monotonic() - entered)
            return grant
        except (_Timeout, _Disconnected):
            raise  # already withdrawn
        except BaseException:
            if not future.done():
                dispatcher.cancel(ticket)
            elif not future.cancelled() and future.exception() is None:
                # Granted, but this request will not go on (cancelled): give it back.
                future.result().withdraw_soon()
            raise
        finally:
            self.queue_s += time.monotonic() - entered

    async def _predict(self) -> None:
        """Predict the wait at arrival (``expected_ms``); Unfittable when it ends past the deadline.

        Without a prediction (the store unreachable, an error asking it) the request queues as
        before: its deadline still holds."""
        if self.gw.health.unreachable:
            return
        try:
            prediction = await predict(self.pool, self.ticket, self.gw.health)
        except Exception as exc:  # noqa: BLE001 - a failed prediction only loses the hint
            log.warning("could not predict the wait of %s: %s", self.request_id, exc)
            return
        self.expected_ms = prediction.wait_ms
        if time.monotonic() + prediction.wait_ms / 1000 > self.deadline:
            raise Unfittable(prediction, self.timeout_s)

    async def _granted(self, future: asyncio.Future[Grant], entered: float) -> Grant:
        """The grant, or _Timeout / _Disconnected (the ticket then withdrawn).

        Nothing is spawned or armed per request: the pool's ``Deadlines`` expires the wait, and
        the connection (or, under another server, a watcher task) says when the caller hangs up;
        either withdraws the ticket and fails its future, which is all this awaits."""
        deadlines = self.pool.dispatcher.deadlines
        if not future.done():
            if self.deadline <= time.monotonic():
                self.expired()
            else:
                deadlines.add(self, self.deadline)
                watcher = self._watch_hang_up()
                try:
                    await future
                except (_Timeout, _Disconnected):
                    raise
                except BaseException:
                    if future.cancelled():
                        # This coroutine was cancelled (awaiting the future cancels it too).
                        self.pool.dispatcher.cancel(self.ticket)
                    raise
                finally:
                    deadlines.remove(self, self.deadline)
                    self._unwatch_hang_up(watcher)
        grant = future.result()
        if self.hung_up:
            # Granted just as the caller left: nothing will be sent, so give the slot and
            # the tokens back (the request itself stays counted: a store cannot return it).
            await grant.withdraw()
            raise _Disconnected
        return grant

    def expired(self) -> None:
        """The deadline passed while waiting (``Deadlines``)."""
        self._withdraw(_Timeout)

    def _hung_up(self) -> None:
        self.hung_up = True
        self._withdraw(_Disconnected)

    def _withdraw(self, why: type[Exception]) -> None:
        """Take the ticket out and fail its wait with ``why``, unless it was granted meanwhile."""
        future = self.ticket.future
        if future is not None and not future.done() and self.pool.dispatcher.cancel(self.ticket):
            future.set_exception(why())

    def _watch_hang_up(self) -> asyncio.Task[None] | None:
        """Have ``_hung_up`` called if the caller leaves: told by the connection when it is
        ``serving.connections``' (no task), else by a task reading ``receive``."""
        connection = self.request.scope.get(CONNECTION_KEY)
        if connection is not None:
            connection.on_hang_up(self._hung_up)
            return None
        watcher = asyncio.ensure_future(_disconnected(self.request.receive))
        watcher.add_done_callback(self._watcher_done)
        return watcher

    def _watcher_done(self, watcher: asyncio.Task[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            self._hung_up()

    def _unwatch_hang_up(self, watcher: asyncio.Task[None] | None) -> None:
        if watcher is not None:
            watcher.remove_done_callback(self._watcher_done)
            watcher.cancel()
            return
        connection = self.request.scope.get(CONNECTION_KEY)
        if connection is not None:
            connection.on_hang_up(None)

    async def _backoff(self, attempt: int) -> None:
        """Exponential backoff with full jitter, never past the queue deadline."""
        await asyncio.sleep(max(0.0, min(_backoff_s(attempt), self.deadline - time.monotonic())))

    # -- streaming -----------------------------------------------------------------------------

    def _relay(self, upstream: httpx.Response, grant: Grant, started: float) -> RelayResponse:
        """Pass the stream through piece by piece; settle its usage once final, before the caller
        sees the end; release the slot when the upstream's answer ends."""
        gw = self.gw
        budget = grant.budget
        tap = UsageTap(strip=not self.include_usage)
        scrub = gw.redactor.stream()

        async def chunks() -> AsyncGenerator[tuple[bytes, bool], None]:
            outcome = CLIENT_CLOSED  # unless the stream ends or the upstream breaks
            actual: int | None = None
            settled = False
            try:
                last = b""
                async for chunk in body_chunks(upstream):
                    out = scrub.feed(tap.feed(chunk))
                    if tap.ended and not settled:
                        # The usage is final: settled before the caller sees the end (or the
                        # usage), as a whole answer is settled before it goes.
                        settled = True
                        actual = gw.accounting.actual(tap.usage)
                        await self._settle_usage(grant, tap.usage, actual)
                    if body_ended(upstream):
                        last += out  # the loop ends at once: it goes with the end of the answer
                    elif out:
                        yield out, False
                outcome = 200
                grant.release()
                self._upstream_done(200, started, budget)
                last += scrub.feed(tap.flush()) + scrub.flush()
                if not settled:
                    actual = gw.accounting.actual(tap.usage)
                    await self._settle_usage(grant, tap.usage, actual)
                await upstream.aclose()
            except httpx.TransportError:
                # Nothing can be resent mid-stream: the caller's connection is cut so it knows.
                outcome = 502
                log.warning("upstream stream broke for %s", self.request_id)
                raise
            finally:
                if outcome != 200:
                    grant.release()
                    self._upstream_done("error", started, budget)
                    # Cancelled (caller gone) or broken upstream: no awaiting here, close aside.
                    task = asyncio.get_running_loop().create_task(upstream.aclose())
                    _cleanup.add(task)
                    task.add_done_callback(_cleanup.discard)
                self._record(outcome, actual)
            yield last, True  # the end of the answer with what is left of it: one write

        return RelayResponse(grant, chunks(), self._answer_lines(upstream))

    async def _settle_usage(self, grant: Grant, usage: dict[str, Any] | None, actual: int | None) -> None:
        """A stream's ``usage`` (``actual`` tokens) settled with the budget (``Accounting.settle``);
        when that asks the store, in a task of its own, so a caller hanging up meanwhile (which
        cancels the relay) does not stop it part-way."""
        gw = self.gw
        estimate = self.ticket.cost.tokens
        settling = gw.accounting.settle(grant.budget, estimate, grant.decision, usage, grant.charge)
        if not gw.accounting.touches_store(estimate, actual):
            await settling  # runs to its end without suspending
            return
        task = asyncio.get_running_loop().create_task(settling)
        _cleanup.add(task)
        task.add_done_callback(_cleanup.discard)
        await asyncio.shield(task)

    # -- answering -----------------------------------------------------------------------------

    def _upstream_done(self, status: int | str, started: float, budget: Budget) -> None:
        elapsed = time.monotonic() - started
        self.upstream_s += elapsed
        self.gw.metrics.upstream(status, elapsed, budget)
        if self.trace is not None:
            self.trace.upstream_done(status)

    def _passed_back(self, upstream: httpx.Response) -> dict[str, str]:
        return self.gw.redactor.headers(passed_back(upstream.headers))

    def _own_headers(self) -> dict[str, str]:
        """``_own_lines`` as a header dict (for the gateway's own error answers)."""
        return {name.decode(): value.decode("latin-1") for name, value in self._own_lines()}

    def _own_lines(self) -> list[tuple[bytes, bytes]]:
        """The gateway's headers on every answer of a request that went through the queue."""
        lines = [
            (b"x-request-id", self.request_id.encode("latin-1")),
            (b"x-apim-queue-ms", b"%d" % round(self.queue_s * 1000)),
            # The class it was queued in: a tenant's max_priority may have lowered what it asked.
            (b"x-apim-priority", PRIORITY_LINES[self.ticket.priority]),
        ]
        if self.expected_ms is not None:
            lines.append((EXPECTED_LINE, b"%d" % self.expected_ms))
        return lines

    def _answer_lines(self, upstream: httpx.Response) -> list[tuple[bytes, bytes]]:
        """An upstream answer's headers as the caller gets them: what is passed back (redacted),
        then the gateway's own."""
        return self.gw.redactor.lines(passed_back_raw(upstream.headers)) + self._own_lines()

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
        if self.trace is not None:
            self.trace.end(status, self.queue_s, self.attempts)
        if gw.tenants.enabled:
            gw.tenant_figures.waited(self.ticket.tenant, self.queue_s)
        if gw.settings.log_requests:
            log.info(
                "request id=%s model=%s pool=%s priority=%s stream=%s tokens_est=%d tokens_actual=%s "
                "attempts=%d queue_ms=%d upstream_ms=%d status=%d",
                self.request_id,
                self.model,
                self.pool.model,
                self.ticket.priority.name.lower(),
                str(self.stream).lower(),
                self.ticket.cost.tokens,
                "-" if actual is None else actual,
                self.attempts,
                round(self.queue_s * 1000),
                round(self.upstream_s * 1000),
                status,
            )


def _backoff_s(attempt: int) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th failure in a row."""
    return min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


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
