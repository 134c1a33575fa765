"""Weighted fair order across tenants inside one priority class: start-time fair queueing.

Every tenant of a pool is a flow with a finish tag ``finish``: where its service so far ends on a
virtual clock. A waiting flow's start tag is ``max(vtime, finish)``; ``vtime`` is the start tag of
the latest admission. The class's next ticket is the head of the waiting flow with the smallest
start tag; admitting a ticket of ``share`` (its cost as a fraction of the budget, divided by its
tenant's weight) moves its flow's finish to start + share. So backlogged tenants are served in
proportion to their weights, a tenant back from idle starts level with the rest (no credit banked
while idle), and a lone tenant takes everything (work-conserving).

A flow can be blocked for a while: held (its own sub-limit is spent: every class) or yielding (a
tenant waiting at another instance is ahead of its class-``p`` head: classes ``p`` and worse). It
leaves those classes' order until then, so it never holds back other flows or its own better
classes.

Per class a heap of (start tag, sequence, version, flow): O(log flows) per admission. A flow's
entry is pushed again with a new version whenever its finish tag changes; an entry whose start
tag is behind because ``vtime`` moved is pushed again when it surfaces (tags only grow).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apim_server.queue import Ticket

CLASSES = 3
SCALE = 10**9
"""A share of one whole minute's budget, in the integer units tags count in (Lua counts them too:
integers keep both stores' decisions identical)."""


def live(entry: tuple[int, Ticket]) -> bool:
    """Whether a queue entry is still its ticket's place (a ticket put back has a new one)."""
    return entry[0] == entry[1].generation and entry[1].waiting


def trim(waiting: deque[tuple[int, Ticket]]) -> None:
    """Drop the dead entries at the front of ``waiting``."""
    while waiting and not live(waiting[0]):
        waiting.popleft()


def share_of(requests: int, tokens: int, rpm: int, tpm: int, weight: float) -> int:
    """A cost's dominant share of a budget (the larger of its fractions of RPM and TPM), divided
    by the tenant's weight: what it advances its tenant's finish tag by. A tenant of few large
    requests and one of many small ones are compared by what they take of the scarcer limit."""
    fraction = max(requests / rpm if rpm else 0.0, tokens / tpm if tpm else 0.0)
    if not rpm and not tpm:
        fraction = requests / 1000  # no minute limit: count requests
    return max(1, math.ceil(fraction * SCALE / weight))


class Flow:
    """One tenant's tickets in one pool, per class in arrival order, and its tags."""

    __slots__ = ("finish", "held_until", "key", "listed", "queued", "version", "waiting", "yields")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.finish = 0
        self.waiting: tuple[deque[tuple[int, Ticket]], ...] = tuple(deque() for _ in range(CLASSES))
        # Requests, tokens, share and tickets waiting per class: what a newcomer has ahead of it.
        self.queued = [[0, 0, 0, 0] for _ in range(CLASSES)]
        self.listed = [False] * CLASSES  # has a current entry in that class's heap
        self.version = [0] * CLASSES
        self.held_until = 0.0  # monotonic: its sub-limit is spent until then (every class)
        self.yields = [0.0] * CLASSES  # monotonic: yielding in that class until then

    def blocked(self, p: int, now: float) -> bool:
        return self.held_until > now or self.yields[p] > now

    @property
    def tickets(self) -> int:
        return self.queued[0][3] + self.queued[1][3] + self.queued[2][3]

    def first(self, p: int) -> Ticket | None:
        """The flow's first waiting ticket of class ``p`` (dropping dead entries on the way)."""
        waiting = self.waiting[p]
        trim(waiting)
        return waiting[0][1] if waiting else None


class FairOrder:
    """Flows by start tag in each class; blocked flows parked aside until they may go again."""

    def __init__(self) -> None:
        self.vtime = 0
        self.flows: dict[Hashable, Flow] = {}
        self._heaps: tuple[list[tuple[int, int, int, Flow]], ...] = tuple([] for _ in range(CLASSES))
        self._parked: list[tuple[float, int, Flow]] = []
        self.active: dict[Flow, None] = {}  # flows with tickets waiting, in arrival order
        self._seq = itertools.count()

    def flow(self, key: Hashable) -> Flow:
        found = self.flows.get(key)
        if found is None:
            found = self.flows[key] = Flow(key)
        return found

    def start(self, flow: Flow) -> int:
        return max(self.vtime, flow.finish)

    def waiting(self, flow: Flow, p: int) -> None:
        """``flow`` has a ticket in class ``p`` now: list it there unless it is listed or blocked."""
        if not flow.listed[p] and not flow.blocked(p, time.monotonic()):
            self._list(flow, p)

    def _list(self, flow: Flow, p: int) -> None:
        flow.listed[p] = True
        flow.version[p] += 1
        heapq.heappush(self._heaps[p], (self.start(flow), next(self._seq), flow.version[p], flow))

    def _relist(self, flow: Flow) -> None:
        for p in range(CLASSES):
            if flow.listed[p]:
                self._list(flow, p)

    def best(self, p: int, now: float) -> Ticket | None:
        """The next ticket of class ``p`` in fair order (None: nothing there may go now)."""
        heap = self._heaps[p]
        while heap:
            key, _, version, flow = heap[0]
            if version != flow.version[p] or not flow.listed[p]:
                heapq.heappop(heap)
                continue
            ticket = flow.first(p)
            if ticket is None:
                heapq.heappop(heap)
                flow.listed[p] = False
                continue
            current = self.start(flow)
            if key != current:  # the virtual clock moved past its tag: it queues at the clock
                flow.version[p] += 1
                heapq.heapreplace(heap, (current, next(self._seq), flow.version[p], flow))
                continue
            return ticket
        return None

    def served(self, flow: Flow, share: int) -> None:
        """A ticket of ``flow`` costing ``share`` was admitted: advance its tags."""
        start = self.start(flow)
        flow.finish = start + share
        self.vtime = max(self.vtime, start)
        self._relist(flow)

    def unserved(self, flow: Flow, share: int) -> None:
        """A ticket of ``flow`` admitted at ``share`` was not served (it is put back): its finish
        tag comes down again, so it is charged once, when served, and keeps its place."""
        flow.finish = max(0, flow.finish - share)
        self._relist(flow)

    def observe(self, vtime: int, tags: Iterable[tuple[Flow, int]]) -> None:
        """Take the shared record's clock and finish tags (every instance's admissions on the
        budget) as ours."""
        if vtime < self.vtime:
            # A new busy period in the record: entries keyed on the old clock would be out of order.
            self.vtime = vtime
            for flow in self.flows.values():
                self._relist(flow)
        self.vtime = vtime
        for flow, finish in tags:
            if finish != flow.finish:
                flow.finish = finish
                self._relist(flow)

    def hold(self, flow: Flow, until: float) -> None:
        """Take ``flow`` out of every class's order until ``until`` (monotonic)."""
        if until <= flow.held_until:
            return
        flow.held_until = until
        self._park(flow, 0, until)

    def yield_from(self, flow: Flow, p: int, until: float) -> None:
        """Take ``flow`` out of class ``p``'s order and worse ones until ``until`` (monotonic)."""
        for q in range(p, CLASSES):
            flow.yields[q] = max(flow.yields[q], until)
        self._park(flow, p, until)

    def _park(self, flow: Flow, p: int, until: float) -> None:
        for q in range(p, CLASSES):
            if flow.listed[q]:
                flow.listed[q] = False
                flow.version[q] += 1
        heapq.heappush(self._parked, (until, next(self._seq), flow))

    def unpark(self, now: float) -> None:
        """Put back in order every flow whose block has ended (in the classes it has ended in)."""
        parked = self._parked
        while parked and parked[0][0] <= now:
            flow = heapq.heappop(parked)[2]
            for p in range(CLASSES):
                if not flow.listed[p] and not flow.blocked(p, now) and flow.first(p) is not None:
                    self._list(flow, p)

    def unblocks_in(self, now: float) -> float | None:
        """Seconds until the soonest blocked flow may go again (None: none is blocked)."""
        parked = self._parked
        return max(0.0, parked[0][0] - now) if parked else None

    def ahead_in_class(self, p: int, own: Hashable, extra: int) -> tuple[int, int]:
        """Requests and tokens of other flows' class-``p`` tickets that a new ticket of tenant
        ``own`` goes after: what each has waiting with start tags before the new ticket's, which
        starts once ``own``'s waiting share in that class and ``extra`` (its share waiting in
        better classes) are served."""
        mine = self.flows.get(own)
        own_start = self.vtime if mine is None else self.start(mine) + extra + mine.queued[p][2]
        requests = tokens = 0
        for flow in self.flows.values():
            if flow is mine:
                continue
            r, t, share, _ = flow.queued[p]
            if not r and not t:
                continue
            room = own_start - self.start(flow)
            if room < 0:
                continue
            # Its tickets whose start tags come first (a tie goes to the flow listed first).
            n = min(r, room * r // share + 1) if share else r
            requests += n
            tokens += -(-t * n // r) if r else t
        return requests, tokens
