"""Admission in queue order through the shared limiter; forwarding is left to each request.

One task runs ``Dispatcher.run``: it takes the head of the queue, reserves a concurrency
slot, asks the limiter, and either grants the ticket (its request then forwards on its own
coroutine, so admission never waits on a response) or sleeps exactly as long as the
limiter says, waking early when the head changes, a slot frees, or admission pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from apim_server.queue import Priority, QueueFull, State, Ticket, TicketQueue
from ratelimit.limiter import Limiter
from ratelimit.limits import Decision

log = logging.getLogger("apim.dispatcher")

STORE_RETRY_S = 0.5
"""Pause after a store error (Redis down) before asking again; requests keep waiting."""


class Closed(Exception):
    """The gateway is shutting down: the ticket will never be admitted."""


class Wakeup:
    """A one-waiter event with an optional timeout, cheaper than ``wait_for(event.wait())``.

    A ``set`` while nobody waits is remembered, so no wake-up is ever lost.
    """

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None
        self._pending = False

    def set(self) -> None:
        self._pending = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, seconds: float | None = None) -> None:
        """Until ``set`` or ``seconds`` pass (forever if None)."""
        if self._pending:
            self._pending = False
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter) if seconds is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            self._pending = False
            if timer is not None:
                timer.cancel()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Dispatcher:
    """Admits queued tickets one at a time, in order, as fast as the budget allows."""

    def __init__(
        self,
        limiter: Limiter,
        key: str,
        queue: TicketQueue,
        max_concurrency: int,
        on_admit: Callable[[Ticket, Decision], None] | None = None,
        batch_size: int = 1,
        inline: bool = False,
        on_return: Callable[[int], None] | None = None,
        store_restarted: Callable[[float], Awaitable[bool]] | None = None,
    ) -> None:
        self.limiter = limiter
        self.key = key
        self.queue = queue
        self.max_concurrency = max_concurrency
        self.batch_size = batch_size
        self.inline = inline
        self.in_flight = 0
        self.paused_until = 0.0  # monotonic
        self.last_decision: Decision | None = None
        self.closed = False
        self.store_down_since: float | None = None  # monotonic; set while admissions fail
        self._on_admit = on_admit
        self._on_return = on_return
        self._store_restarted = store_restarted
        self._wake = Wakeup()
        self._idle = False  # waiting for an arrival
        self._want_slot = False  # waiting for a forwarded request to end
        self._watching: Ticket | None = None  # the denied head it sleeps for
        self._task: asyncio.Task[None] | None = None

    # -- the request side ---------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        """Queue a new request; QueueFull or Closed if it cannot wait here."""
        if self.closed:
            raise Closed
        self.queue.push(ticket)
        watching = self._watching
        if self._idle or (watching is not None and ticket.priority < watching.priority):
            self._wake.set()

    async def admit_now(self, ticket: Ticket) -> Decision | None:
        """Admit a new request on the caller's own coroutine when nothing waits before it.

        Only with an in-process store (``inline``), whose admission never suspends: then this
        runs as one step of the event loop, so no other request can slip in between and queue
        order holds, and the round trip through the dispatcher task is saved. None when the
        request must queue (others wait, a pause, no free slot, or the budget says no).
        """
        if (
            not self.inline
            or self.closed
            or self.queue.depth
            or self.in_flight >= self.max_concurrency
            or self.paused_until > time.monotonic()
        ):
            return None
        decision = await self.limiter.acquire(self.key, ticket.cost)
        self.last_decision = decision
        if not decision.allowed:
            return None
        ticket.state = State.GRANTED
        ticket.decision = decision
        self.in_flight += 1
        if self._on_admit is not None:
            self._on_admit(ticket, decision)
        return decision

    def requeue(self, ticket: Ticket) -> None:
        """Put a request back at the head of its class (upstream 429, retry)."""
        if self.closed:
            raise Closed
        self.queue.push_front(ticket)
        watching = self._watching
        if self._idle or (watching is not None and ticket.priority <= watching.priority):
            self._wake.set()

    def cancel(self, ticket: Ticket) -> bool:
        """Withdraw a waiting ticket (caller gone, timed out); False if it was granted meanwhile."""
        if ticket.state is State.GRANTED:
            return False
        if self.queue.leave(ticket, State.CANCELLED) and ticket is self._watching:
            self._wake.set()
        return True

    def release(self) -> None:
        """A granted request is done with its slot (answered, failed, or abandoned)."""
        self.in_flight -= 1
        if self._want_slot:
            self._wake.set()

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (the upstream said so); extends, never shortens."""
        until = time.monotonic() + seconds
        if until > self.paused_until:
            self.paused_until = until
            self._wake.set()

    @property
    def paused_for(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    def expected_wait_ms(self) -> int:
        """A hint for ``retry-after`` on a full queue: the head's wait, or the pause."""
        wait = self.paused_for * 1000
        if self.last_decision is not None and not self.last_decision.allowed:
            wait = max(wait, self.last_decision.wait_ms)
        return int(wait)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="apim-dispatcher")

    def close(self) -> list[Ticket]:
        """Stop admitting; every waiting ticket's future fails with Closed. Returns them."""
        self.closed = True
        drained = self.queue.drain()
        for ticket in drained:
            if ticket.future is not None and not ticket.future.done():
                ticket.future.set_exception(Closed())
        self._wake.set()
        return drained

    async def stop(self) -> None:
        if not self.closed:
            self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        while not self.closed:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher step failed; retrying")
                await self._wake.wait(STORE_RETRY_S)

    async def _step(self) -> None:
        if self.in_flight >= self.max_concurrency:
            # Reserve the slot before admission: budget is never spent on what cannot be sent.
            self._want_slot = True
            await self._wake.wait()
            self._want_slot = False
            return
        head = self.queue.head()
        if head is None:
            self._idle = True
            await self._wake.wait()
            self._idle = False
            return
        paused = self.paused_until - time.monotonic()
        if paused > 0:
            await self._wake.wait(paused)
            return
        if self.store_down_since is not None:
            # Nothing is admitted until the store has been seen to keep its record.
            await self._check_recovery()
            return

        batch = self._batch(head)
        if len(batch) > 1:
            await self._admit_batch(batch)
            return

        head.state = State.ADMITTING
        try:
            decision = await self.limiter.acquire(self.key, head.cost)
        except Exception as exc:  # noqa: BLE001 - any store failure holds admission, said once
            if head.state is State.ADMITTING:
                head.state = State.QUEUED
            self._store_failed(exc)
            await self._wake.wait(STORE_RETRY_S)
            return
        self._store_ok()
        self.last_decision = decision
        if not await self._settle(head, decision):
            return

        head.state = State.QUEUED
        self._watching = head
        try:
            await self._wake.wait(max(decision.wait_ms, 1) / 1000)
        finally:
            self._watching = None

    async def _settle(self, ticket: Ticket, decision: Decision) -> bool:
        """Grant an allowed ticket; True only if it was denied and is still waiting."""
        if ticket.state is not State.ADMITTING:
            # The caller left (or shutdown began) during the store round trip.
            if decision.allowed:
                await self.return_tokens(ticket, decision)
            return False
        if not decision.allowed:
            return True
        self.queue.leave(ticket, State.GRANTED)
        self.in_flight += 1
        ticket.decision = decision
        if self._on_admit is not None:
            self._on_admit(ticket, decision)
        assert ticket.future is not None
        ticket.future.set_result(decision)
        return False

    def _batch(self, head: Ticket) -> list[Ticket]:
        """The next tickets to ask about at once, or just the head.

        A shared store costs a network round trip per admission; asked one at a time, that
        round trip caps the gateway's rate. Far from every limit, several queued tickets are
        asked about concurrently: all of them fit, so queue order is kept. Near a limit (less
        than twice the batch's cost left in any limit, as of the latest decision) admission
        goes one at a time again, so a denied head is never overtaken.
        """
        free = self.max_concurrency - self.in_flight
        last = self.last_decision
        if self.batch_size < 2 or free < 2 or last is None or not last.allowed:
            return [head]
        tickets = self.queue.first(min(self.batch_size, free))
        requests, tokens = len(tickets), sum(t.cost.tokens for t in tickets)
        for state in last.states:
            if state.limit and state.remaining < 2 * (requests if state.name.startswith("req") else tokens):
                return [head]
        return tickets

    async def _admit_batch(self, batch: list[Ticket]) -> None:
        for ticket in batch:
            ticket.state = State.ADMITTING
        results = await asyncio.gather(
            *(self.limiter.acquire(self.key, t.cost) for t in batch), return_exceptions=True
        )
        failed: BaseException | None = None
        for ticket, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failed = result
                if ticket.state is State.ADMITTING:
                    ticket.state = State.QUEUED
                continue
            if self.last_decision is None or result.now_ms >= self.last_decision.now_ms:
                self.last_decision = result
            if await self._settle(ticket, result):
                ticket.state = State.QUEUED  # denied: the next step waits for it alone
        if failed is not None:
            self._store_failed(failed)
            await self._wake.wait(STORE_RETRY_S)
        else:
            self._store_ok()

    def _store_failed(self, exc: BaseException) -> None:
        """Admission is held while the store is unreachable: said once, not every retry."""
        if self.store_down_since is None:
            self.store_down_since = time.monotonic()
            log.error(
                "limiter store unreachable (%s: %s): admission held, queued requests wait; "
                "retrying every %.1fs",
                type(exc).__name__,
                exc,
                STORE_RETRY_S,
            )
        else:
            log.debug("limiter store still unreachable: %s", exc)

    def note_store_failure(self, exc: BaseException) -> None:
        """Another user of the store (the cluster view) found it unreachable: an idle instance
        learns of an outage too, and checks the store's record before its next admission."""
        self._store_failed(exc)

    async def _check_recovery(self) -> None:
        """After an outage: is the store back, and does it still hold the last window's admissions?

        A Redis restarted without persistence comes back empty: admitting at once could send a
        whole budget on top of what the upstream still counts from before the outage. Nothing was
        admitted anywhere since the outage began (no instance admits without the store), so
        pausing until one window after that instant clears the upstream's window.
        """
        assert self.store_down_since is not None
        try:
            usage = await self.limiter.peek(self.key)
            restarted = False
            if self._store_restarted is not None:
                restarted = await self._store_restarted(time.monotonic() - self.store_down_since)
        except Exception as exc:  # noqa: BLE001 - still down: keep holding
            self._store_failed(exc)
            await self._wake.wait(STORE_RETRY_S)
            return
        empty = all(state.used == 0 for state in usage.states if "/day" not in state.name)
        if restarted and empty:
            hold = self.store_down_since + self.limiter.policy.longest_ms / 1000 - time.monotonic()
            if hold > 0:
                log.warning(
                    "the limiter store restarted empty during the outage (its record of the last "
                    "window is lost): admission paused %.1fs more so that the upstream's window clears; "
                    "give Redis persistence (appendonly yes) to avoid this",
                    hold,
                )
                self.pause(hold)
        self._store_ok()

    def _store_ok(self) -> None:
        if self.store_down_since is not None:
            log.warning(
                "limiter store reachable again after %.1fs: admission resumes",
                time.monotonic() - self.store_down_since,
            )
            self.store_down_since = None

    async def return_tokens(self, ticket: Ticket, decision: Decision) -> None:
        """An admission that will not be sent: give its tokens back (the request stays counted)."""
        if ticket.cost.tokens <= 0:
            return
        try:
            await self.limiter.refund(self.key, ticket.cost.tokens, decision.now_ms)
        except Exception:
            log.exception("could not return the tokens of an abandoned admission")
            return
        if self._on_return is not None:
            self._on_return(ticket.cost.tokens)


__all__ = ["Closed", "Dispatcher", "Priority", "QueueFull", "Ticket", "TicketQueue", "Wakeup"]
