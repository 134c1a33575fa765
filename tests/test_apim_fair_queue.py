"""Tenants in one pool's queue: weighted fair order within a class, lending, blocking, and what a
newcomer has ahead of it. The order is the queue's alone, so these drive it directly."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from apim_server.flows import SCALE, share_of
from apim_server.queue import Priority, State, Ticket, TicketQueue
from apim_server.tenants import Tenant
from ratelimit.limits import Cost, Decision, FairAnswer

RPM, TPM = 600, 60_000


def tenant(name: str, weight: float = 1.0) -> Tenant:
    return Tenant(name, weight, Priority.HIGH)


def ticket(who: Tenant, tokens: int = 100, priority: Priority = Priority.NORMAL) -> Ticket:
    return Ticket(priority, Cost(1, tokens), who, share_of(1, tokens, RPM, TPM, who.weight))


def admit(queue: TicketQueue) -> Ticket:
    head = queue.head()
    assert head is not None
    assert queue.leave(head, State.GRANTED)
    return head


def names(order: list[Ticket]) -> str:
    return "".join(t.tenant.name for t in order if t.tenant is not None)


async def test_backlogged_tenants_are_served_in_proportion_to_their_weights() -> None:
    queue = TicketQueue(1000)
    a, b, c = tenant("a"), tenant("b"), tenant("c", weight=2)
    for who in (a, b, c):  # a arrives first with all of its tickets: arrival order does not matter
        for _ in range(60):
            queue.push(ticket(who))
    order = [admit(queue) for _ in range(40)]
    # In every stretch of 8 admissions: 2, 2 and 4 (give or take one at the edges).
    for i in range(0, 40, 8):
        counts = Counter(t.tenant.name for t in order[i : i + 8] if t.tenant is not None)
        assert abs(counts["a"] - 2) <= 1 and abs(counts["b"] - 2) <= 1 and abs(counts["c"] - 4) <= 1, counts
    totals = Counter(names(order))
    assert (totals["a"], totals["b"], totals["c"]) == (10, 10, 20)


async def test_within_a_tenant_and_class_order_is_fifo() -> None:
    queue = TicketQueue(100)
    a, b = tenant("a"), tenant("b")
    mine = [ticket(a) for _ in range(5)]
    for t in mine:
        queue.push(t)
        queue.push(ticket(b))
    order = [admit(queue) for _ in range(10)]
    assert [t for t in order if t.tenant is a] == mine


async def test_a_lone_tenant_takes_everything_and_a_newcomer_gets_no_banked_credit() -> None:
    queue = TicketQueue(1000)
    a, b = tenant("a"), tenant("b")
    for _ in range(50):
        queue.push(ticket(a))
    assert names([admit(queue) for _ in range(30)]) == "a" * 30, "work-conserving: nobody else waits"
    for _ in range(10):
        queue.push(ticket(b))
    # b starts level with a (not 30 admissions ahead): they alternate from now on.
    order = names([admit(queue) for _ in range(10)])
    assert order.count("b") == 5, order
    assert "bbb" not in order and "aaa" not in order


async def test_an_idle_share_is_lent_and_taken_back_when_its_tenant_returns() -> None:
    queue = TicketQueue(1000)
    a, b, c = tenant("a"), tenant("b"), tenant("c", weight=2)
    for _ in range(100):
        queue.push(ticket(a))
        queue.push(ticket(c))
    # b is idle: a and c split its share by their weights, 1:2.
    lent = Counter(names([admit(queue) for _ in range(30)]))
    assert (lent["a"], lent["c"]) == (10, 20)
    for _ in range(40):
        queue.push(ticket(b))
    back = Counter(names([admit(queue) for _ in range(40)]))
    # b takes its share back at once, no more (one either way at the edges).
    assert abs(back["a"] - 10) <= 1 and abs(back["b"] - 10) <= 1 and abs(back["c"] - 20) <= 1, back


async def test_class_comes_before_fairness() -> None:
    queue = TicketQueue(100)
    heavy, light = tenant("heavy"), tenant("light")
    for _ in range(5):
        queue.push(ticket(light))
    urgent = [ticket(heavy, priority=Priority.HIGH) for _ in range(3)]
    for t in urgent:
        queue.push(t)
    assert [admit(queue) for _ in range(3)] == urgent


async def test_dominant_share_weighs_a_cost_by_the_scarcer_limit() -> None:
    queue = TicketQueue(1000)
    big, small = tenant("big"), tenant("small")
    for _ in range(20):
        queue.push(ticket(big, tokens=1000))  # 1/60 of TPM, 1/600 of RPM: tokens bind
    for _ in range(100):
        queue.push(ticket(small, tokens=100))  # 1/600 of both
    order = [admit(queue) for _ in range(44)]
    tokens = Counter()
    for t in order:
        tokens[t.tenant.name] += t.cost.tokens  # type: ignore[union-attr]
    # Equal weights: equal tokens (10,000 of TPM each, give or take one request).
    assert abs(tokens["big"] - tokens["small"]) <= 1000, tokens


async def test_a_blocked_tenant_never_holds_back_the_others() -> None:
    queue = TicketQueue(100)
    a, b = tenant("a"), tenant("b")
    first = ticket(a)
    queue.push(first)
    queue.push(ticket(b))
    assert queue.head() is first
    queue.hold(first, time.monotonic() + 0.2)
    head = queue.head()
    assert head is not None and head.tenant is b
    assert queue.leave(head, State.GRANTED)
    assert queue.head() is None, "only the blocked tenant waits"
    wait = queue.unblocks_in()
    assert wait is not None and 0 < wait <= 0.2
    await asyncio.sleep(wait)
    assert queue.head() is first


async def test_a_yield_holds_back_its_class_and_worse_only() -> None:
    queue = TicketQueue(100)
    a, b = tenant("a"), tenant("b")
    normal, low, other = ticket(a), ticket(a, priority=Priority.LOW), ticket(b, priority=Priority.LOW)
    for t in (normal, low, other):
        queue.push(t)
    queue.yield_from(normal, Priority.NORMAL, time.monotonic() + 0.2)
    # a's normal and low wait; b's low goes; a new high of a goes before it.
    assert queue.head() is other
    high = ticket(a, priority=Priority.HIGH)
    queue.push(high)
    assert queue.head() is high
    assert queue.leave(high, State.GRANTED) and queue.leave(other, State.GRANTED)
    assert queue.head() is None
    # Yielding still waits: the registry names it at its best class.
    assert queue.waiting_set(ticket(b)) == (-1, [(Priority.NORMAL, normal.flow)])
    await asyncio.sleep(queue.unblocks_in() or 0)
    assert queue.head() is normal


async def test_the_waiting_set_names_every_tenant_at_its_best_class_but_held_ones() -> None:
    queue = TicketQueue(100)
    a, b, c = tenant("a"), tenant("b"), tenant("c")
    asked, a_low = ticket(a), ticket(a, priority=Priority.LOW)
    b_low, b_high, c_one = ticket(b, priority=Priority.LOW), ticket(b, priority=Priority.HIGH), ticket(c)
    for t in (asked, a_low, b_low, b_high, c_one):
        queue.push(t)
    rest, others = queue.waiting_set(asked)
    assert rest == Priority.LOW
    assert [(p, f.key) for p, f in others] == [(Priority.HIGH, b), (Priority.NORMAL, c)]
    queue.hold(c_one, time.monotonic() + 10)  # its sub-limit is spent: it cannot go, nobody yields to it
    assert queue.waiting_set(asked)[1] == [(Priority.HIGH, b_high.flow)]
    assert queue.leave(a_low, State.CANCELLED)
    assert queue.waiting_set(asked)[0] == -1


async def test_the_records_tags_put_a_stale_order_right() -> None:
    """Another instance served b meanwhile: the tags in an answer make a go first here."""
    queue = TicketQueue(100)
    a, b = tenant("a"), tenant("b")
    a1, b1 = ticket(a), ticket(b)
    queue.push(b1)
    queue.push(a1)
    assert queue.head() is b1
    assert b1.flow is not None
    share = a1.share
    answer = Decision(False, 0, 0, (), fair=FairAnswer(True, 0, 2 * share, (3 * share,)))
    queue.observe(a1, answer, [b1.flow])
    assert queue.head() is a1


async def test_cancel_and_put_back_keep_a_tenants_order() -> None:
    queue = TicketQueue(100)
    a, b = tenant("a"), tenant("b")
    a1, a2, a3 = ticket(a), ticket(a), ticket(a)
    for t in (a1, a2, a3):
        queue.push(t)
    queue.push(ticket(b))
    assert queue.leave(a2, State.CANCELLED)
    assert admit(queue) is a1
    queue.push_front(a1)  # an upstream 429: back before a3
    order = [admit(queue) for _ in range(3)]
    assert [t for t in order if t.tenant is a] == [a1, a3]
    assert queue.depth == 0


async def test_ahead_counts_what_comes_before_in_fair_order() -> None:
    queue = TicketQueue(1000)
    flood, light = tenant("flood"), tenant("light")
    for _ in range(50):
        queue.push(ticket(flood))
    # A light tenant's new request goes after about one of the flood's, not all fifty.
    requests, _ = queue.ahead(Priority.NORMAL, light)
    assert requests <= 2
    # The flooding tenant's next request has its own fifty ahead.
    assert queue.ahead(Priority.NORMAL, flood)[0] == 50
    # A better class counts whole, whoever queued it.
    queue.push(ticket(flood, priority=Priority.HIGH))
    assert queue.ahead(Priority.NORMAL, light)[0] <= 3
    assert queue.ahead(Priority.LOW, light)[0] == 51


async def test_without_tenants_the_queue_is_fifo_within_a_class() -> None:
    queue = TicketQueue(100)
    tickets = [Ticket(Priority.NORMAL, Cost(1, 10)) for _ in range(5)]
    for t in tickets:
        queue.push(t)
    assert queue.ahead(Priority.NORMAL) == (5, 50)
    assert [admit(queue) for _ in range(5)] == tickets


@pytest.mark.parametrize(
    ("requests", "tokens", "expected"), [(1, 0, -(-SCALE // RPM)), (1, 6000, SCALE // 10)]
)
def test_share_is_the_dominant_fraction(requests: int, tokens: int, expected: int) -> None:
    assert share_of(requests, tokens, RPM, TPM, 1.0) == expected
    assert share_of(requests, tokens, RPM, TPM, 2.0) == -(-expected // 2)
