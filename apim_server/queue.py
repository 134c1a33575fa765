"""The bounded waiting room: three priority classes, FIFO within each."""

from __future__ import annotations

import asyncio
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


class State(IntEnum):
    QUEUED = 0
    ADMITTING = 1  # the dispatcher is asking the limiter about it right now
    GRANTED = 2
    CANCELLED = 3
    OUT = 4  # taken out of the queue for another reason (backoff, answered)


class Ticket:
    """One request's place in its pool's queue; its future resolves with the grant."""

    __slots__ = ("arrived", "cost", "decision", "future", "generation", "priority", "state")

    def __init__(self, priority: Priority, cost: Cost) -> None:
        self.priority = priority
        self.cost = cost
        self.arrived = time.monotonic()
        self.state = State.OUT
        self.future: asyncio.Future[Grant] | None = None
        self.decision: Decision | None = None
        self.generation = 0  # bumped on every entry, so a stale place in a deque is never live again

    @property
    def waiting(self) -> bool:
        return self.state in (State.QUEUED, State.ADMITTING)


class QueueFull(Exception):
    """The queue holds ``max_size`` requests already."""


class TicketQueue:
    """Tickets waiting for admission: O(1) push, pop and cancel.

    A cancelled or granted ticket stays in its deque until it reaches the front, where it is
    dropped; ``depth`` counts only tickets still waiting. Entries carry the ticket's generation
    so that a ticket put back in the queue never revives its old place.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._classes: tuple[deque[tuple[int, Ticket]], ...] = tuple(deque() for _ in Priority)
        self.depth = 0

    def push(self, ticket: Ticket) -> None:
        """Append at the back of its class; QueueFull when the queue is full."""
        if self.depth >= self.max_size:
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
        """The next ticket to admit: the first waiting one of the highest non-empty class."""
        for waiting in self._classes:
            while waiting:
                generation, ticket = waiting[0]
                if generation == ticket.generation and (
                    ticket.state is State.QUEUED or ticket.state is State.ADMITTING
                ):
                    return ticket
                waiting.popleft()
        return None

    def first(self, n: int) -> list[Ticket]:
        """Up to ``n`` waiting tickets in admission order (those not being admitted already)."""
        out: list[Ticket] = []
        for waiting in self._classes:
            for entry in waiting:
                if entry[0] == entry[1].generation and entry[1].state is State.QUEUED:
                    out.append(entry[1])
                    if len(out) == n:
                        return out
        return out

    def leave(self, ticket: Ticket, state: State) -> bool:
        """Take ``ticket`` out (granted, cancelled, answered); False if it was not waiting."""
        if not ticket.waiting:
            return False
        ticket.state = state
        self.depth -= 1
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


def _live(entry: tuple[int, Ticket]) -> bool:
    return entry[0] == entry[1].generation and entry[1].waiting
