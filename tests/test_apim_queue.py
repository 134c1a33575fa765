"""The gateway's queue: priority classes, FIFO within a class, cancel, put-back, bound."""

from __future__ import annotations

import pytest

from apim_server.queue import Priority, QueueFull, State, Ticket, TicketQueue
from ratelimit.limits import Cost


def ticket(priority: Priority = Priority.NORMAL, tokens: int = 10) -> Ticket:
    return Ticket(priority, Cost(1, tokens))


def admit(queue: TicketQueue) -> Ticket:
    head = queue.head()
    assert head is not None
    assert queue.leave(head, State.GRANTED)
    return head


async def test_fifo_within_a_class_and_classes_in_priority_order() -> None:
    queue = TicketQueue(100)
    low1, normal1, high1, normal2, low2, high2 = (
        ticket(Priority.LOW),
        ticket(Priority.NORMAL),
        ticket(Priority.HIGH),
        ticket(Priority.NORMAL),
        ticket(Priority.LOW),
        ticket(Priority.HIGH),
    )
    for t in (low1, normal1, high1, normal2, low2, high2):
        queue.push(t)
    assert queue.depth == 6
    order = [admit(queue) for _ in range(6)]
    assert order == [high1, high2, normal1, normal2, low1, low2]
    assert queue.head() is None
    assert queue.depth == 0


async def test_cancel_removes_a_ticket_wherever_it_waits() -> None:
    queue = TicketQueue(100)
    a, b, c = ticket(), ticket(), ticket()
    for t in (a, b, c):
        queue.push(t)
    assert queue.leave(b, State.CANCELLED)
    assert not queue.leave(b, State.CANCELLED), "a second cancel is a no-op"
    assert queue.depth == 2
    assert queue.depth_by_class() == {"high": 0, "normal": 2, "low": 0}
    assert queue.leave(a, State.CANCELLED)
    assert queue.head() is c


async def test_full_queue_refuses_but_a_put_back_is_never_refused() -> None:
    queue = TicketQueue(2)
    a, b = ticket(), ticket()
    queue.push(a)
    queue.push(b)
    with pytest.raises(QueueFull):
        queue.push(ticket())
    granted = admit(queue)
    assert granted is a
    queue.push(ticket())  # room again
    queue.push_front(a)  # over the bound: a retry keeps its place regardless
    assert queue.depth == 3
    assert queue.head() is a


async def test_put_back_goes_to_the_head_in_arrival_order() -> None:
    queue = TicketQueue(100)
    first, second, third = ticket(), ticket(), ticket()
    for t in (first, second, third):
        queue.push(t)
    admit(queue)
    admit(queue)
    # Both forwarded requests come back (upstream 429s), the later one first.
    queue.push_front(second)
    queue.push_front(first)
    assert [admit(queue) for _ in range(3)] == [first, second, third]


async def test_a_put_back_ticket_does_not_revive_its_old_place() -> None:
    queue = TicketQueue(100)
    a, b = ticket(), ticket()
    queue.push(a)
    queue.push(b)
    # a is admitted but its stale entry is still in the deque when it comes back.
    assert queue.leave(a, State.GRANTED)
    queue.push_front(a)
    assert admit(queue) is a
    assert admit(queue) is b
    assert queue.head() is None
    assert queue.depth == 0


async def test_drain_takes_every_waiting_ticket_in_order() -> None:
    queue = TicketQueue(100)
    low, high, normal = ticket(Priority.LOW), ticket(Priority.HIGH), ticket(Priority.NORMAL)
    for t in (low, high, normal):
        queue.push(t)
    queue.leave(normal, State.CANCELLED)
    assert queue.drain() == [high, low]
    assert queue.depth == 0
    assert high.state is State.OUT


async def test_oldest_arrival_is_the_oldest_waiting_head() -> None:
    queue = TicketQueue(100)
    assert queue.oldest_arrival() is None
    low, high = ticket(Priority.LOW), ticket(Priority.HIGH)
    queue.push(low)
    queue.push(high)
    assert queue.oldest_arrival() == low.arrived
    queue.leave(low, State.CANCELLED)
    assert queue.oldest_arrival() == high.arrived


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, Priority.NORMAL), ("", Priority.NORMAL), ("high", Priority.HIGH), (" LOW ", Priority.LOW)],
)
def test_priority_header_values(header: str | None, expected: Priority) -> None:
    assert Priority.parse(header) is expected


@pytest.mark.parametrize("header", ["urgent", "1", "normal,high"])
def test_unknown_priority_is_an_error(header: str) -> None:
    with pytest.raises(ValueError, match=header):
        Priority.parse(header)


async def test_aging_sees_a_risen_ticket_behind_many_already_admitted() -> None:
    # Admitted tickets must not crowd the aging look-ahead (nor stay in the queue, held).
    queue = TicketQueue(100, aging_s=0.01)
    for _ in range(40):
        queue.push(ticket(Priority.LOW))
        admit(queue)
    risen = ticket(Priority.LOW)
    risen.arrived -= 0.05  # waited 5 aging steps: it now ranks with HIGH
    queue.push(risen)
    normal = ticket(Priority.NORMAL)
    queue.push(normal)
    assert queue.head() is risen
    assert queue.first(2) == [risen, normal]


async def test_many_admitted_tickets_leave_no_trace_in_the_batches() -> None:
    queue = TicketQueue(100)
    for _ in range(1000):
        queue.push(ticket())
        (only,) = queue.first(32)
        assert queue.leave(only, State.GRANTED)
    # Nothing looks at the queue again (it is idle): none of them is kept there.
    assert not any(queue._classes)
    assert not any(entries for flow in queue.order.flows.values() for entries in flow.waiting)
    last = ticket()
    queue.push(last)
    assert queue.first(32) == [last]
    assert sum(len(entries) for entries in queue._classes) == 1
    assert sum(len(entries) for flow in queue.order.flows.values() for entries in flow.waiting) == 1
