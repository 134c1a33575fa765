"""The bounded waiting room: three priority classes, FIFO within each.

Each class may fill the queue only up to its share of ``max_size`` (``high`` all of it), so a
queue full of ``low`` never refuses ``high``. With aging on, a ticket rises one class for every
``aging_s`` it has waited (only in the order of admission, never in its capacity), so ``low`` is
not starved forever; off, priority is strict.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING

from ratelimit.limits import Cost, Decision

if TYPE_CHECKING:
    from apim_server.grant import Grant


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
    """One request's place in its pool's queue; its future resolves with the grant."""

    __slots__ = ("arrived", "cost", "deadline", "decision", "future", "generation", "priority", "state")

    def __init__(self, priority: Priority, cost: Cost) -> None:
        self.priority = priority
        self.cost = cost
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


class TicketQueue:
    """Tickets waiting for admission: O(1) push, pop and cancel.

    A cancelled or granted ticket stays in its deque until it reaches the front, where it is
    dropped; ``depth`` counts only tickets still waiting. Entries carry the ticket's generation
    so that a ticket put back in the queue never revives its old place.
    """

    def __init__(
        self, max_size: int, shares: tuple[int, int, int] = FULL_SHARES, aging_s: float = 0.0
    ) -> None:
        self.max_size = max_size
        # Room per class: the depth (all classes) at which a class stops being taken; at least 1.
        self.room = tuple(max(1, math.ceil(max_size * share / 100)) for share in shares)
        self.aging_s = aging_s
        self._classes: tuple[deque[tuple[int, Ticket]], ...] = tuple(deque() for _ in Priority)
        self.depth = 0
        # Costs waiting per class (requests, tokens): what a new ticket of a class has ahead of it.
        self._queued: list[list[int]] = [[0, 0] for _ in Priority]

    def push(self, ticket: Ticket) -> None:
        """Append at the back of its class; QueueFull when its class may take no more."""
        if self.depth >= self.room[ticket.priority]:
            raise QueueFull
        self._enter(ticket)
        self._classes[ticket.priority].append((ticket.generation, ticket))

    def push_front(self, ticket: Ticket) -> None:
        """Put back at the head of its class (a retry keeps its place; never refused).

        Several requests put back at once (a burst of upstream 429s) keep their arrival order.
        """
        self._enter(ticket)
        waiting = self._classes[ticket.priority]
        i = 0
        for entry in waiting:
            if _live(entry) and entry[1].arrived > ticket.arrived:
                break
            i += 1
        waiting.insert(i, (ticket.generation, ticket))

    def head(self) -> Ticket | None:
        """The next ticket to admit: the first waiting one of the highest non-empty class (with
        aging, of the best class any class's oldest ticket has reached, the oldest first)."""
        best: Ticket | None = None
        for waiting in self._classes:
            while waiting:
                generation, ticket = waiting[0]
                if generation == ticket.generation and (
                    ticket.state is State.QUEUED or ticket.state is State.ADMITTING
                ):
                    if not self.aging_s:
                        return ticket
                    if best is None or self._rank(ticket) < self._rank(best):
                        best = ticket
                    break
                waiting.popleft()
        return best

    def first(self, n: int) -> list[Ticket]:
        """Up to ``n`` waiting tickets in admission order (those not being admitted already)."""
        out: list[Ticket] = []
        for waiting in self._classes:
            taken = 0
            for entry in waiting:
                if entry[0] == entry[1].generation and entry[1].state is State.QUEUED:
                    out.append(entry[1])
                    taken += 1
                    if taken == n or (not self.aging_s and len(out) == n):
                        break
            if not self.aging_s and len(out) == n:
                return out
        if self.aging_s:
            # Within a class the oldest ranks best, so the n best of all are among these.
            out.sort(key=self._rank)
        return out[:n]

    def _rank(self, ticket: Ticket) -> tuple[int, float]:
        """Admission order with aging: the class reached by waiting, then arrival."""
        risen = int((time.monotonic() - ticket.arrived) / self.aging_s)
        return max(0, ticket.priority - risen), ticket.arrived

    def ahead(self, priority: Priority) -> tuple[int, int]:
        """Requests and tokens waiting that a new ticket of ``priority`` would queue behind
        (its own class and better; with aging, a lower class's aged tickets are not counted)."""
        requests = tokens = 0
        for p in range(priority + 1):
            requests += self._queued[p][0]
            tokens += self._queued[p][1]
        return requests, tokens

    def leave(self, ticket: Ticket, state: State) -> bool:
        """Take ``ticket`` out (granted, cancelled, answered); False if it was not waiting."""
        if not ticket.waiting:
            return False
        ticket.state = state
        self.depth -= 1
        queued = self._queued[ticket.priority]
        queued[0] -= ticket.cost.requests
        queued[1] -= ticket.cost.tokens
        return True

    def drain(self) -> list[Ticket]:
        """Take every waiting ticket out, in queue order (shutdown)."""
        out = []
        for waiting in self._classes:
            while waiting:
                entry = waiting.popleft()
                if _live(entry) and self.leave(entry[1], State.OUT):
                    out.append(entry[1])
        return out

    def oldest_arrival(self) -> float | None:
        """Monotonic arrival time of the longest-waiting ticket (a class head: FIFO)."""
        oldest = None
        for waiting in self._classes:
            for entry in waiting:
                if _live(entry):
                    arrived = entry[1].arrived
                    if oldest is None or arrived < oldest:
                        oldest = arrived
                    break
        return oldest

    def depth_by_class(self) -> dict[str, int]:
        return {p.name.lower(): sum(1 for e in self._classes[p] if _live(e)) for p in Priority}

    def _enter(self, ticket: Ticket) -> None:
        ticket.generation += 1
        ticket.state = State.QUEUED
        ticket.decision = None
        ticket.future = asyncio.get_running_loop().create_future()
        self.depth += 1
        queued = self._queued[ticket.priority]
        queued[0] += ticket.cost.requests
        queued[1] += ticket.cost.tokens


def _live(entry: tuple[int, Ticket]) -> bool:
    return entry[0] == entry[1].generation and entry[1].waiting
