"""The bounded waiting room: three priority classes; tenants in weighted fair order within a
class (``flows``); FIFO within a tenant's class.

Each class may fill the queue only up to its share of ``max_size`` (``high`` all of it), so a
queue full of ``low`` never refuses ``high``. With aging on, a ticket rises one class for every
``aging_s`` it has waited (only in the order of admission, never in its capacity), so ``low`` is
not starved forever; off, priority is strict.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING

from apim_server.flows import CLASSES, FairOrder, Flow, live, trim
from ratelimit.limits import Cost, Decision

if TYPE_CHECKING:
    from apim_server.grant import Grant
    from apim_server.tenants import Tenant


class Priority(IntEnum):
    """Queue classes; a lower value is served first."""

    HIGH = 0
    NORMAL = 1
    LOW = 2

    @classmethod
    def parse(cls, value: str | None) -> Priority:
        """The class an ``x-apim-priority`` header names; ValueError for anything else."""
        if value is None or value == "":
            return cls.NORMAL
        try:
            return cls[value.strip().upper()]
        except KeyError:
            raise ValueError(value) from None


PRIORITY_NAMES = ("high", "normal", "low")
"""By ``Priority`` value, as the ``x-apim-priority`` header spells them."""


class State(IntEnum):
    QUEUED = 0
    ADMITTING = 1  # the dispatcher is asking the limiter about it right now
    GRANTED = 2
    CANCELLED = 3
    OUT = 4  # taken out of the queue for another reason (backoff, answered)


class Ticket:
    """One request's place in its pool's queue; its future resolves with the grant.

    ``tenant`` names its flow in the pool's fair order (None: the one implicit tenant); ``share``
    is its cost as a fraction of the pool's budget divided by the tenant's weight (see ``flows``).
    """

    __slots__ = (
        "arrived",
        "cost",
        "deadline",
        "decision",
        "flow",
        "future",
        "generation",
        "priority",
        "share",
        "state",
        "tenant",
    )

    def __init__(self, priority: Priority, cost: Cost, tenant: Tenant | None = None, share: int = 0) -> None:
        self.priority = priority
        self.cost = cost
        self.tenant = tenant
        self.share = share
        self.flow: Flow | None = None  # set when it first joins a queue
        self.arrived = time.monotonic()
        self.deadline = math.inf  # monotonic: the exchange sets it from its timeout
        self.state = State.OUT
        self.future: asyncio.Future[Grant] | None = None
        self.decision: Decision | None = None
        self.generation = 0  # bumped on every entry, so a stale place in a deque is never live again

    @property
    def waiting(self) -> bool:
        return self.state in (State.QUEUED, State.ADMITTING)


class QueueFull(Exception):
    """The queue holds as many requests as the ticket's class may join."""


FULL_SHARES = (100, 100, 100)
"""Every class may fill the whole queue (no per-class capacity)."""
AGED_SCAN = 16
"""With aging, how far into a lower class's arrival order to look past blocked tenants."""


class TicketQueue:
    """Tickets waiting for admission: class first (strict, or with aging), then tenants in
    weighted fair order (``flows``), then FIFO within a tenant's class.

    Push, cancel and the next head are O(1) or O(log tenants). A cancelled or granted ticket
    stays in its deques until it reaches a front, where it is dropped (at once, when it leaves
    from a front); ``depth`` counts only tickets still waiting. Entries carry the ticket's
    generation so that a ticket put back in the queue never revives its old place. Each class
    also keeps every ticket in arrival order (for aging, batches, shutdown and the oldest wait).
    """

    def __init__(
        self, max_size: int, shares: tuple[int, int, int] = FULL_SHARES, aging_s: float = 0.0
    ) -> None:
        self.max_size = max_size
        # Room per class: the depth (all classes) at which a class stops being taken; at least 1.
        self.room = tuple(max(1, math.ceil(max_size * share / 100)) for share in shares)
        self.aging_s = aging_s
        self._classes: tuple[deque[tuple[int, Ticket]], ...] = tuple(deque() for _ in Priority)
        self.order = FairOrder()
        self.depth = 0
        # Costs waiting per class (requests, tokens): what a new ticket of a class has ahead of it.
        self._queued: list[list[int]] = [[0, 0] for _ in Priority]
        self._counts = [0] * len(Priority)

    def push(self, ticket: Ticket) -> None:
        """Append at the back of its class; QueueFull when its class may take no more."""
        if self.depth >= self.room[ticket.priority]:
            raise QueueFull
        flow = self._enter(ticket)
        entry = (ticket.generation, ticket)
        self._classes[ticket.priority].append(entry)
        flow.waiting[ticket.priority].append(entry)
        self.order.waiting(flow, ticket.priority)

    def push_front(self, ticket: Ticket) -> None:
        """Put back at the head of its class and of its tenant's (a retry keeps its place; never
        refused). Several requests put back at once (a burst of upstream 429s) keep their
        arrival order."""
        flow = self._enter(ticket)
        entry = (ticket.generation, ticket)
        for waiting in (self._classes[ticket.priority], flow.waiting[ticket.priority]):
            i = 0
            for other in waiting:
                if live(other) and other[1].arrived > ticket.arrived:
                    break
                i += 1
            waiting.insert(i, entry)
        self.order.waiting(flow, ticket.priority)

    def head(self) -> Ticket | None:
        """The next ticket to admit: in the best class holding a ticket of a tenant that may go,
        the one first in fair order (with aging, a lower class's oldest ticket that has risen
        to that class and is older goes first)."""
        now = time.monotonic()
        order = self.order
        order.unpark(now)
        for p in Priority:
            best = order.best(p, now)
            if best is not None:
                return self._aged(best, now) if self.aging_s else best
        return None

    def _aged(self, best: Ticket, now: float) -> Ticket:
        rank = (best.priority, best.arrived)
        for p in range(best.priority + 1, len(Priority)):
            for entry in itertools.islice(self._classes[p], AGED_SCAN):
                ticket = entry[1]
                if not live(entry) or ticket.flow is None or ticket.flow.blocked(p, now):
                    continue
                if self._rank(ticket) < rank:
                    best, rank = ticket, self._rank(ticket)
                break
        return best

    def first(self, n: int) -> list[Ticket]:
        """Up to ``n`` tickets to ask about at once: the head, then others in arrival order by
        class (not blocked, not being admitted already)."""
        head = self.head()
        if head is None or head.state is not State.QUEUED:
            return []
        out = [head]
        now = time.monotonic()
        for waiting in self._classes:
            for entry in waiting:
                if len(out) >= n:
                    return out
                ticket = entry[1]
                if (
                    entry[0] == ticket.generation
                    and ticket.state is State.QUEUED
                    and ticket is not head
                    and ticket.flow is not None
                    and not ticket.flow.blocked(ticket.priority, now)
                ):
                    out.append(ticket)
        return out

    def _rank(self, ticket: Ticket) -> tuple[int, float]:
        """Admission order with aging: the class reached by waiting, then arrival."""
        return self.class_now(ticket, time.monotonic()), ticket.arrived

    def class_now(self, ticket: Ticket, now: float) -> int:
        """The class ``ticket`` is admitted in: its own, or with aging the one it has risen to."""
        if not self.aging_s:
            return int(ticket.priority)
        return max(0, ticket.priority - int((now - ticket.arrived) / self.aging_s))

    def ahead(self, priority: Priority, tenant: Tenant | None = None) -> tuple[int, int]:
        """Requests and tokens waiting that a new ticket of ``priority`` and ``tenant`` would be
        admitted after: every better class, its own tenant's tickets of its class, and what other
        tenants have in its class before it in fair order (aged lower-class tickets are not
        counted)."""
        requests = tokens = 0
        for p in range(priority):
            requests += self._queued[p][0]
            tokens += self._queued[p][1]
        order = self.order
        if not order.flows or (len(order.flows) == 1 and tenant in order.flows):
            # One tenant: its whole class is ahead.
            return requests + self._queued[priority][0], tokens + self._queued[priority][1]
        own = order.flows.get(tenant)
        extra = 0
        if own is not None:
            requests += own.queued[priority][0]
            tokens += own.queued[priority][1]
            extra = sum(own.queued[p][2] for p in range(priority))
        r, t = order.ahead_in_class(priority, tenant, extra)
        return requests + r, tokens + t

    def waiting_set(self, ticket: Ticket) -> tuple[int, list[tuple[int, Flow]]]:
        """What waits here besides ``ticket``, as the budget's registry takes it: the best class
        of its tenant's other tickets (-1: none), and every other tenant with tickets that may go
        (not held by its sub-limit) at its best class. O(waiting tenants)."""
        now = time.monotonic()
        rest = -1
        others: list[tuple[int, Flow]] = []
        for flow in self.order.active:
            if flow.held_until > now:
                continue
            best = -1
            for p in range(CLASSES):
                n = flow.queued[p][3]
                if flow is ticket.flow and p == ticket.priority and ticket.waiting:
                    n -= 1
                if n > 0:
                    first = flow.first(p)
                    best = p if first is None or first is ticket else self.class_now(first, now)
                    break
            if flow is ticket.flow:
                rest = best
            elif best >= 0:
                others.append((best, flow))
        return rest, others

    def tenant_ahead(self, priority: Priority, tenant: Tenant | None) -> tuple[int, int]:
        """Requests and tokens of ``tenant``'s own tickets a new one of ``priority`` goes after."""
        flow = self.order.flows.get(tenant)
        if flow is None:
            return 0, 0
        return (
            sum(flow.queued[p][0] for p in range(priority + 1)),
            sum(flow.queued[p][1] for p in range(priority + 1)),
        )

    def hold(self, ticket: Ticket, until: float) -> None:
        """Hold back every ticket of ``ticket``'s tenant until ``until`` (monotonic): its own
        sub-limit is spent. Other tenants go meanwhile."""
        if ticket.flow is not None:
            self.order.hold(ticket.flow, until)

    def yield_from(self, ticket: Ticket, p: int, until: float) -> None:
        """Hold back ``ticket``'s tenant in class ``p`` and worse until ``until`` (monotonic): a
        tenant waiting at another instance goes first. Other tenants, and its better classes, go
        meanwhile."""
        if ticket.flow is not None:
            self.order.yield_from(ticket.flow, p, until)

    def unblocks_in(self) -> float | None:
        """Seconds until a blocked tenant may go again, when tickets wait only behind blocks."""
        return self.order.unblocks_in(time.monotonic())

    def observe(self, ticket: Ticket, decision: Decision, others: list[Flow]) -> None:
        """The shared record's fair-share tags in an answer to ``ticket``'s ask, which named
        ``others`` (see ``flows``)."""
        tags = list(zip(others, decision.tags, strict=True))
        if ticket.flow is not None:
            tags.append((ticket.flow, decision.finish))
        self.order.observe(decision.vtime, tags)

    def served_directly(self, ticket: Ticket) -> None:
        """``ticket`` was admitted without waiting: its tenant's tags advance all the same."""
        if ticket.share:
            flow = ticket.flow
            if flow is None:
                flow = ticket.flow = self.order.flow(ticket.tenant)
            self.order.served(flow, ticket.share)

    def leave(self, ticket: Ticket, state: State) -> bool:
        """Take ``ticket`` out (granted, cancelled, answered); False if it was not waiting."""
        if not ticket.waiting:
            return False
        ticket.state = state
        self.depth -= 1
        p = ticket.priority
        self._counts[p] -= 1
        queued = self._queued[p]
        queued[0] -= ticket.cost.requests
        queued[1] -= ticket.cost.tokens
        flow = ticket.flow
        if flow is not None:
            mine = flow.queued[p]
            mine[0] -= ticket.cost.requests
            mine[1] -= ticket.cost.tokens
            mine[2] -= ticket.share
            mine[3] -= 1
            if not flow.tickets:
                self.order.active.pop(flow, None)
            if state is State.GRANTED:
                self.order.served(flow, ticket.share)
        # Dead entries at the front go now: left there, batches and the aging look-ahead would
        # scan them, and they would keep answered tickets alive.
        trim(self._classes[p])
        if flow is not None:
            flow.first(p)  # the same in its tenant's own order
        return True

    def drain(self) -> list[Ticket]:
        """Take every waiting ticket out, in queue order (shutdown)."""
        out = []
        for waiting in self._classes:
            while waiting:
                entry = waiting.popleft()
                if live(entry) and self.leave(entry[1], State.OUT):
                    out.append(entry[1])
        return out

    def oldest_arrival(self) -> float | None:
        """Monotonic arrival time of the longest-waiting ticket (a class's first: FIFO)."""
        oldest = None
        for waiting in self._classes:
            trim(waiting)
            if waiting:
                arrived = waiting[0][1].arrived
                if oldest is None or arrived < oldest:
                    oldest = arrived
        return oldest

    def arrivals(self) -> list[float]:
        """Monotonic arrival times of every waiting ticket (for ``/status``, not the hot path)."""
        return [e[1].arrived for waiting in self._classes for e in waiting if live(e)]

    def depth_by_class(self) -> dict[str, int]:
        return {p.name.lower(): sum(1 for e in self._classes[p] if live(e)) for p in Priority}

    def depth_by_tenant(self) -> dict[Tenant | None, int]:
        """Tickets waiting per tenant (flows with none are left out)."""
        out: dict[Tenant | None, int] = {}
        for key, flow in self.order.flows.items():
            n = sum(1 for waiting in flow.waiting for e in waiting if live(e))
            if n:
                out[key] = n  # type: ignore[index]
        return out

    def _enter(self, ticket: Ticket) -> Flow:
        ticket.generation += 1
        ticket.state = State.QUEUED
        ticket.decision = None
        ticket.future = asyncio.get_running_loop().create_future()
        self.depth += 1
        p = ticket.priority
        self._counts[p] += 1
        queued = self._queued[p]
        queued[0] += ticket.cost.requests
        queued[1] += ticket.cost.tokens
        flow = ticket.flow
        if flow is None:
            flow = ticket.flow = self.order.flow(ticket.tenant)
        mine = flow.queued[p]
        mine[0] += ticket.cost.requests
        mine[1] += ticket.cost.tokens
        mine[2] += ticket.share
        mine[3] += 1
        self.order.active[flow] = None
        return flow
