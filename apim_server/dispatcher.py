"""Admission in queue order for one pool (the budgets that serve one model); forwarding is left
to each request.

One task per pool runs ``Dispatcher.run``: it takes the head of the pool's queue, reserves a
concurrency slot on a member's deployment, asks that member's budget, and either grants (the
request then forwards on its own coroutine, so admission never waits on a response) or sleeps
exactly as long as the budgets say, waking early when the head changes, a slot frees, or the
store's health changes. Pools never wait on each other: each has its own queue and task.

Earliest fit: members are asked in configuration order, skipping any that cannot take the head
now (paused or cooling, out of service, no free slot, or known from an earlier ask to need
longer for this head); the first that admits wins. When none does, the dispatcher sleeps until
the soonest of the members' waits and asks again, so the head goes to whichever member frees
first, and no request of the pool overtakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from apim_server.admission import Outcome, TenantCharge, admit
from apim_server.budget import Budget
from apim_server.deadline import Prediction, Unfittable
from apim_server.expiry import Deadlines
from apim_server.flows import Flow
from apim_server.grant import Grant
from apim_server.queue import Priority, QueueFull, State, Ticket, TicketQueue
from apim_server.slots import Slot
from apim_server.store_health import StoreHealth
from apim_server.tenants import name_of
from ratelimit.fair_share import HOLD_MS, RETRY_MS, Ask
from ratelimit.limits import Decision

log = logging.getLogger("apim.dispatcher")

STORE_RETRY_S = 0.5
"""Pause after a store error (Redis down) before asking again; requests keep waiting."""


PROBE_POLL_S = 0.05
"""How often a pool looks again at a deployment whose probe request is still out."""


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
    """Admits one pool's queued tickets one at a time, in order, as fast as its budgets allow."""

    def __init__(
        self,
        members: list[Budget],
        queue: TicketQueue,
        health: StoreHealth | None = None,
        on_admit: Callable[[Ticket, Budget, Decision], None] | None = None,
        batch_size: int = 1,
        inline: bool = False,
        name: str = "pool",
        instance: str | None = None,
    ) -> None:
        self.members = members
        self.queue = queue
        self.health = health
        self.batch_size = batch_size if len(members) == 1 else 1
        self.inline = inline
        self.name = name
        # This instance's id in each budget's waiting registry: fair shares across instances
        # (None: this instance alone decides its order, nothing extra is sent to the store).
        self.instance = instance
        self.last_decision: Decision | None = None
        self.closed = False
        self._on_admit = on_admit
        self._wake = Wakeup()
        self._idle = False  # waiting for an arrival
        self._watching: Ticket | None = None  # the denied head it sleeps for
        self._denied: dict[int, float] = {}  # member index -> monotonic time the head may fit there
        self._asked: dict[int, float] = {}  # member index -> monotonic time the head was asked there
        self._why: dict[int, Decision] = {}  # member index -> the denial that said so
        self._denied_for: Ticket | None = None
        self._repick: Ticket | None = None  # yielded to this instance's own tenant, asked again
        self._task: asyncio.Task[None] | None = None
        self.deadlines = Deadlines()  # of the requests waiting here
        if health is not None:
            health.listen(self._wake.set)

    # -- the request side ---------------------------------------------------------------

    def submit(self, ticket: Ticket) -> None:
        """Queue a new request; QueueFull or Closed if it cannot wait here."""
        if self.closed:
            raise Closed
        self.queue.push(ticket)
        watching = self._watching
        if self._idle or (watching is not None and _may_go_before(ticket, watching)):
            self._wake.set()

    async def admit_now(self, ticket: Ticket) -> Grant | None:
        """Admit a new request on the caller's own coroutine when nothing waits before it.

        Only with an in-process store (``inline``), whose admission never suspends: then this
        runs as one step of the event loop, so no other request can slip in between and queue
        order holds, and the round trip through the dispatcher task is saved. None when the
        request must queue (others wait, a hold, no free slot, or the budgets say no).
        """
        if not self.inline or self.closed or self.queue.depth:
            return None
        if self.health is not None and self.health.wait_s() is not None:
            return None
        for member in self.members:
            if not _can_try(member, ticket):
                continue
            slot = member.deployment.slots.take()
            charge = None
            if ticket.tenant is None or ticket.tenant.limiter is None:
                decision = await member.acquire(ticket.cost)  # no sub-limits: the budget alone
            else:
                outcome = await admit(member, ticket)
                decision, charge = outcome.decision, outcome.charge
                if decision is None:
                    slot.release()
                    return None  # its tenant's sub-limit: it waits in the queue
            self.last_decision = decision
            if decision.allowed:
                ticket.state = State.GRANTED
                if ticket.share:
                    self.queue.served_directly(ticket)
                return self._grant(ticket, member, decision, slot, charge)
            slot.release()
        return None

    async def unserved(self, grant: Grant) -> None:
        """``grant``'s request was not served (an upstream 429, a failed attempt) and will be put
        back: its tenant's share comes off its finish tag again, here and in the budget's record,
        so a request is charged once in the fair order, when it is served, and keeps its place.
        (The budget keeps the request and its tokens: the upstream may have counted them.)"""
        ticket = grant.ticket
        if not ticket.share or ticket.flow is None:
            return
        self.queue.order.unserved(ticket.flow, ticket.share)
        if self.instance is None:
            return
        fair = Ask(name_of(ticket.tenant), int(ticket.priority), ticket.share, self.instance)
        try:
            await grant.budget.give_back_share(fair, grant.decision)
        except Exception as exc:  # noqa: BLE001 - the tenant stays charged: stricter, never over
            log.warning("could not give back %s's fair share: %s", fair.tenant, exc)

    def requeue(self, ticket: Ticket) -> None:
        """Put a request back at the head of its class (upstream 429, retry, failover)."""
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

    def wake(self) -> None:
        self._wake.set()

    def reconsider(self) -> None:
        """A member's limits rose (``following``): what the members said about the head no
        longer holds; ask them again now."""
        self._denied_for = None
        self._wake.set()

    @property
    def in_flight(self) -> int:
        """Requests out on this pool's deployments (shared with other pools they serve)."""
        seen: dict[int, int] = {}
        for member in self.members:
            seen[id(member.deployment)] = member.deployment.slots.used
        return sum(seen.values())

    @property
    def paused_for(self) -> float:
        """How long before any member may admit again (0 when one may now)."""
        waits = [m.ready_in() for m in self.members]
        held = self.health.wait_s() if self.health is not None else None
        own = min(waits) if waits else 0.0
        if held is not None and held != float("inf"):
            own = max(own, held)
        return own

    def expected_wait_ms(self) -> int:
        """A hint for ``retry-after`` on a full queue: the head's wait, or the pause."""
        wait = self.paused_for * 1000
        if self.last_decision is not None and not self.last_decision.allowed:
            wait = max(wait, self.last_decision.wait_ms)
        return int(wait)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name=f"apim-dispatcher-{self.name}")

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
        head = self.queue.head()
        if head is None:
            # Nothing waits, or only tenants held back (their sub-limit, a yield) until then.
            self._idle = True
            await self._wake.wait(self.queue.unblocks_in() if self.queue.depth else None)
            self._idle = False
            return
        if self.health is not None:
            held = self.health.wait_s()
            if held is not None:
                # Down (wait for the health owner's word) or held after a restart (its time).
                await self._wake.wait(None if held == float("inf") else held)
                return
        member, index, soonest = self._choose(head)
        if member is None:
            if self._refuse_if_late(head):
                return
            self._watching = head
            if self.instance is not None:
                # Its registry entry lapses unless it asks again within the hold (``_choose``).
                soonest = HOLD_MS / 1000 if soonest is None else min(soonest, HOLD_MS / 1000)
            try:
                await self._wake.wait(soonest)
            finally:
                self._watching = None
            return

        batch = self._batch(head, member)
        if len(batch) > 1:
            await self._admit_batch(batch, member)
            return

        head.state = State.ADMITTING
        slot = member.deployment.slots.take()
        ask, named = self._ask(head)
        try:
            outcome = await admit(member, head, ask)
        except Exception as exc:  # noqa: BLE001 - any store failure holds admission, said once
            slot.release()
            if head.state is State.ADMITTING:
                head.state = State.QUEUED
            self._store_failed(exc)
            await self._wake.wait(STORE_RETRY_S)
            return
        if await self._settle(head, member, outcome, slot, named):
            return
        decision = outcome.decision
        assert decision is not None
        head.state = State.QUEUED
        now = time.monotonic()
        self._denied[index] = now + max(decision.wait_ms, 1) / 1000
        self._asked[index] = now
        self._why[index] = decision
        # The next step asks the next member, or sleeps until the soonest of their waits.

    def _choose(self, head: Ticket) -> tuple[Budget | None, int, float | None]:
        """The first member that may be asked about ``head`` now (with its index), or None and
        how long until the soonest member may be (None: until a slot frees or a wake-up)."""
        if self._denied_for is not head:
            self._denied_for = head
            self._denied.clear()
            self._asked.clear()
            self._why.clear()
        now = time.monotonic()
        soonest: float | None = None
        for i, candidate in enumerate(self.members):
            if candidate.limiter.too_large(head.cost) is not None:
                continue
            until = self._denied.get(i, now)
            if self.instance is not None and i in self._asked:
                # Asked again within the hold, or its registry entry lapses and others overtake it.
                until = min(until, self._asked[i] + HOLD_MS / 1000)
            wait = max(candidate.ready_in(), until - now)
            if wait <= 0 and not candidate.deployment.admittable():
                wait = PROBE_POLL_S  # its probe is out: the answer decides
            if wait > 0:
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            if candidate.deployment.slots.free <= 0:
                # Reserve the slot before admission: budget is never spent on what cannot be sent.
                candidate.deployment.slots.want(self._wake.set)
                continue
            return candidate, i, None
        return None, -1, soonest

    def _refuse_if_late(self, head: Ticket) -> bool:
        """Answer ``head`` with its 429 when no member can admit it before its deadline."""
        if head.deadline == float("inf") or self._denied_for is not head:
            return False
        now = time.monotonic()
        best: Prediction | None = None
        for i, candidate in enumerate(self.members):
            if candidate.limiter.too_large(head.cost) is not None:
                continue
            until = self._denied.get(i)
            if until is None or until <= now:
                # Not asked about this head (a pause alone does not refuse: the upstream's word
                # is less exact than the budget's record, so such a head ends in its 504).
                return False
            why = self._why[i]
            wait = max(candidate.ready_in(), until - now)
            found = Prediction(round(wait * 1000), why.binding, head.cost)
            if best is None or found.wait_ms < best.wait_ms:
                best = found
        if best is None or now + best.wait_ms / 1000 <= head.deadline:
            return False
        if not self.queue.leave(head, State.OUT):
            return False
        if head.future is not None and not head.future.done():
            head.future.set_exception(Unfittable(best, head.deadline - head.arrived))
        return True

    def _ask(self, ticket: Ticket) -> tuple[Ask | None, list[Flow]]:
        """What the budget's record needs for fair shares across instances (None: alone), and
        the flows whose tags its answer carries."""
        if self.instance is None:
            return None, []
        queue = self.queue
        rest, others = queue.waiting_set(ticket)
        ask = Ask(
            name_of(ticket.tenant),
            queue.class_now(ticket, time.monotonic()),
            ticket.share,
            self.instance,
            rest,
            tuple((p, name_of(flow.key)) for p, flow in others),  # type: ignore[arg-type]
            # Its order follows the budget's tags only in a pool of one budget (``_settle``).
            own=len(self.members) == 1,
        )
        return ask, [flow for _, flow in others]

    async def _settle(
        self, ticket: Ticket, member: Budget, outcome: Outcome, slot: Slot, named: list[Flow]
    ) -> bool:
        """Grant an allowed ticket, or hold back its tenant (its sub-limit, a yield); False only
        if the budget's limits denied it and it is still waiting."""
        decision = outcome.decision
        if decision is not None and (
            self.last_decision is None or decision.now_ms >= self.last_decision.now_ms
        ):
            self.last_decision = decision
        if decision is not None and ticket.share and self.instance is not None and len(self.members) == 1:
            # The record's tags of every tenant waiting here: this order stays the budget's.
            self.queue.observe(ticket, decision, named)
        if ticket.state is not State.ADMITTING or (ticket.future is not None and ticket.future.cancelled()):
            # The caller left (or shutdown began) during the store round trip; or its wait was
            # cancelled, which cancels the future at once and withdraws the ticket a step later.
            slot.release()
            if decision is not None and decision.allowed:
                await member.return_tokens(ticket.cost.tokens, decision)
                if outcome.charge is not None:
                    await outcome.charge.give_back(ticket.cost.requests, ticket.cost.tokens)
            return True
        if decision is None:
            slot.release()
            ticket.state = State.QUEUED
            assert outcome.tenant_denial is not None
            self._tenant_waits(ticket, outcome.tenant_denial)
            return True
        if not decision.allowed:
            slot.release()
            if not decision.yielded:
                return False
            ticket.state = State.QUEUED
            self._yielded(ticket, decision)
            return True
        self._repick = None
        self.queue.leave(ticket, State.GRANTED)
        grant = self._grant(ticket, member, decision, slot, outcome.charge)
        assert ticket.future is not None
        ticket.future.set_result(grant)
        return True

    def _yielded(self, ticket: Ticket, decision: Decision) -> None:
        """A waiting tenant goes before ``ticket``. At another instance: its tenant waits in its
        class until that instance has asked; others may go. Here (this order was stale; the
        answer's tags have refreshed it): ask again at once, unless the same ticket comes back
        (the order and the record still disagree, e.g. several budgets' tags): then it waits."""
        wait_ms = decision.wait_ms
        if not wait_ms:
            if self._repick is not ticket:
                self._repick = ticket
                return
            wait_ms = RETRY_MS
        self._repick = None
        p = self.queue.class_now(ticket, time.monotonic())
        self.queue.yield_from(ticket, p, time.monotonic() + wait_ms / 1000)

    def _tenant_waits(self, ticket: Ticket, denial: Decision) -> None:
        """Its tenant's sub-limit is spent: hold back that tenant's tickets until it frees, or
        answer the ticket now when that is after its deadline."""
        now = time.monotonic()
        wait_s = max(denial.wait_ms, 1) / 1000
        if now + wait_s <= ticket.deadline:
            self.queue.hold(ticket, now + wait_s)
            return
        if self.queue.leave(ticket, State.OUT) and ticket.future is not None and not ticket.future.done():
            who = f"tenant {name_of(ticket.tenant)}"
            found = Prediction(denial.wait_ms, denial.binding, ticket.cost, who=who)
            ticket.future.set_exception(Unfittable(found, ticket.deadline - ticket.arrived))

    def _grant(
        self,
        ticket: Ticket,
        member: Budget,
        decision: Decision,
        slot: Slot,
        charge: TenantCharge | None = None,
    ) -> Grant:
        ticket.decision = decision
        member.deployment.granted()
        if self._on_admit is not None:
            self._on_admit(ticket, member, decision)
        return Grant(member, decision, slot, ticket, charge)

    def _batch(self, head: Ticket, member: Budget) -> list[Ticket]:
        """The next tickets to ask about at once, or just the head.

        A shared store costs a network round trip per admission; asked one at a time, that
        round trip caps the gateway's rate. Far from every limit, several queued tickets are
        asked about concurrently: all of them fit, so queue order is kept. Near a limit (less
        than twice the batch's cost left in any limit, as of the latest decision) admission
        goes one at a time again, so a denied head is never overtaken. Single-member pools only.
        """
        free = member.deployment.slots.free
        last = self.last_decision
        if self.batch_size < 2 or free < 2 or last is None or not last.allowed:
            return [head]
        tickets = self.queue.first(min(self.batch_size, free))
        requests, tokens = len(tickets), sum(t.cost.tokens for t in tickets)
        for state in last.states:
            if state.limit and state.remaining < 2 * (requests if state.name.startswith("req") else tokens):
                return [head]
        return tickets

    async def _admit_batch(self, batch: list[Ticket], member: Budget) -> None:
        slots = []
        for ticket in batch:
            ticket.state = State.ADMITTING
            slots.append(member.deployment.slots.take())
        asks = [self._ask(t) for t in batch]
        results = await asyncio.gather(
            *(admit(member, t, ask) for t, (ask, _) in zip(batch, asks, strict=True)), return_exceptions=True
        )
        failed: BaseException | None = None
        for ticket, slot, result, (_, named) in zip(batch, slots, results, asks, strict=True):
            if isinstance(result, BaseException):
                slot.release()
                failed = result
                if ticket.state is State.ADMITTING:
                    ticket.state = State.QUEUED
                continue
            if not await self._settle(ticket, member, result, slot, named):
                ticket.state = State.QUEUED  # denied: the next step waits for it alone
        if failed is not None:
            self._store_failed(failed)
            await self._wake.wait(STORE_RETRY_S)

    def _store_failed(self, exc: BaseException) -> None:
        if self.health is not None:
            self.health.failed(exc)
        else:
            log.warning("limiter store call failed: %s", exc)


def _may_go_before(ticket: Ticket, watching: Ticket) -> bool:
    """Whether a new ticket may come before the denied head the dispatcher sleeps for: a better
    class, or the same class and another tenant (the fair order decides)."""
    return ticket.priority < watching.priority or (
        ticket.priority == watching.priority and ticket.tenant is not watching.tenant
    )


def _can_try(member: Budget, ticket: Ticket) -> bool:
    return (
        member.ready_in() <= 0
        and member.deployment.admittable()
        and member.deployment.slots.free > 0
        and member.limiter.too_large(ticket.cost) is None
    )


__all__ = ["Closed", "Dispatcher", "Priority", "QueueFull", "Ticket", "TicketQueue", "Wakeup"]
