"""The dispatcher with an embedded store: order, waiting, slots, cancels, pauses.

The same behaviours are covered end to end (real processes) in test_apim_e2e*.py; these
pin down the orderings that are hard to observe from outside.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from apim_server.budget import Budget, Deployment
from apim_server.config_file import ANY_MODEL, DeploymentPlan
from apim_server.dispatcher import Closed, Dispatcher, Wakeup
from apim_server.flows import share_of
from apim_server.queue import Priority, State, Ticket, TicketQueue
from apim_server.tenants import Tenant
from apim_server.upstream import Upstream
from ratelimit import RedisStore, Store
from ratelimit.cost import CostRule
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost, Limits


def budget(
    limits: Limits,
    concurrency: int = 10,
    name: str = "test",
    model: str = ANY_MODEL,
    store: Store | None = None,
) -> Budget:
    """One budget on a deployment nobody sends to (the dispatcher never forwards)."""
    plan = DeploymentPlan(
        name, f"deployment:{name}", "http://127.0.0.1:9/v1", "", "openai", CostRule.SUM, concurrency, {}, {}
    )
    deployment = Deployment(plan, Upstream(plan.url, "", concurrency, 1.0), 1024)
    return Budget(deployment, model, limits, store or EmbeddedStore())


def make(limits: Limits, concurrency: int = 10, batch: int = 1, inline: bool = False) -> Dispatcher:
    return Dispatcher([budget(limits, concurrency)], TicketQueue(100), batch_size=batch, inline=inline)


async def used(d: Dispatcher, name: str) -> int:
    return (await d.members[0].peek()).state(name).used


@pytest.fixture
async def running() -> AsyncIterator[list[Dispatcher]]:
    started: list[Dispatcher] = []
    yield started
    for d in started:
        await d.stop()


def start(d: Dispatcher, started: list[Dispatcher]) -> Dispatcher:
    d.start()
    started.append(d)
    return d


async def granted(t: Ticket, within: float = 2.0) -> bool:
    assert t.future is not None
    done, _ = await asyncio.wait((t.future,), timeout=within)
    return bool(done)


async def test_wakeup_is_never_lost_and_times_out() -> None:
    wake = Wakeup()
    wake.set()
    await asyncio.wait_for(wake.wait(), 1)  # remembered while nobody waited
    started = time.monotonic()
    await wake.wait(0.05)
    assert time.monotonic() - started >= 0.04


async def test_admits_concurrently_up_to_the_budget_then_waits(running: list[Dispatcher]) -> None:
    d = start(make(Limits(rpm=3)), running)
    tickets = [Ticket(Priority.NORMAL, Cost(1, 0)) for _ in range(5)]
    for t in tickets:
        d.submit(t)
    assert all([await granted(t) for t in tickets[:3]])
    # Nothing forwarded has finished, yet three are out: admission never waits on a response.
    assert d.in_flight == 3
    assert not await granted(tickets[3], within=0.3)
    assert d.queue.depth == 2
    assert (await used(d, "requests/minute")) == 3


async def test_the_slot_is_taken_before_admission(running: list[Dispatcher]) -> None:
    d = start(make(Limits(rpm=100), concurrency=1), running)
    first, second = Ticket(Priority.NORMAL, Cost(1, 5)), Ticket(Priority.NORMAL, Cost(1, 5))
    d.submit(first)
    d.submit(second)
    assert await granted(first)
    assert not await granted(second, within=0.2)
    # The second was never charged: it cannot be sent while the only slot is busy.
    assert (await used(d, "requests/minute")) == 1
    first.future.result().release()  # type: ignore[union-attr]
    assert await granted(second)
    assert (await used(d, "requests/minute")) == 2


async def test_waits_exactly_until_the_budget_frees(running: list[Dispatcher]) -> None:
    # A 1 s sub-window of RPM 60 admits one request per second: the second waits ~1 s, not more.
    d = start(make(Limits(rpm=60, short_window_s=1)), running)
    a, b = Ticket(Priority.NORMAL, Cost(1, 0)), Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(a)
    assert await granted(a)
    d.submit(b)
    assert not await granted(b, within=0.5)
    assert await granted(b, within=2.0)
    assert a.decision is not None and b.decision is not None
    assert b.decision.now_ms - a.decision.now_ms >= 1000


async def test_a_higher_priority_arrival_goes_first(running: list[Dispatcher]) -> None:
    d = start(make(Limits(rpm=60, short_window_s=1)), running)
    first = Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(first)
    assert await granted(first)
    low, normal, high = (Ticket(p, Cost(1, 0)) for p in (Priority.LOW, Priority.NORMAL, Priority.HIGH))
    for t in (low, normal, high):
        d.submit(t)
    assert await granted(high, within=2)
    assert not low.future.done() and not normal.future.done()  # type: ignore[union-attr]
    assert await granted(normal, within=2)
    assert not low.future.done()  # type: ignore[union-attr]
    assert await granted(low, within=2)


async def test_cancelling_the_waiting_head_lets_the_next_one_in(running: list[Dispatcher]) -> None:
    d = start(make(Limits(tpm=100)), running)
    fill = Ticket(Priority.NORMAL, Cost(1, 90))
    d.submit(fill)
    assert await granted(fill)
    big, small = Ticket(Priority.NORMAL, Cost(1, 50)), Ticket(Priority.NORMAL, Cost(1, 10))
    d.submit(big)
    d.submit(small)
    assert not await granted(small, within=0.2), "FIFO: the small one waits behind the big one"
    assert d.cancel(big)
    assert big.state is State.CANCELLED
    assert await granted(small, within=1)
    assert (await used(d, "tokens/minute")) == 100


async def test_pause_holds_admission_until_it_ends(running: list[Dispatcher]) -> None:
    d = start(make(Limits(rpm=100)), running)
    d.members[0].pause(0.4)
    t = Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(t)
    assert not await granted(t, within=0.25)
    assert await granted(t, within=1)


async def test_close_fails_every_waiting_ticket(running: list[Dispatcher]) -> None:
    d = start(make(Limits(rpm=1)), running)
    first, queued = Ticket(Priority.NORMAL, Cost(1, 0)), Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(first)
    assert await granted(first)
    d.submit(queued)
    assert d.close() == [queued]
    with pytest.raises(Closed):
        await queued.future  # type: ignore[misc]
    with pytest.raises(Closed):
        d.submit(Ticket(Priority.NORMAL, Cost(1, 0)))


def make_batched(limits: Limits, batch: int = 8) -> Dispatcher:
    return make(limits, 100, batch=batch)


async def test_far_from_the_limits_tickets_are_admitted_in_batches(running: list[Dispatcher]) -> None:
    d = start(make_batched(Limits(rpm=1000, tpm=100_000)), running)
    warm = Ticket(Priority.NORMAL, Cost(1, 10))
    d.submit(warm)
    assert await granted(warm)
    tickets = [Ticket(Priority.NORMAL, Cost(1, 10)) for _ in range(20)]
    for t in tickets:
        d.submit(t)
    assert all([await granted(t) for t in tickets])
    decisions = [t.decision for t in tickets]
    assert all(dec is not None and dec.allowed for dec in decisions)
    assert (await used(d, "requests/minute")) == 21


async def test_near_a_limit_batches_stop_and_order_holds(running: list[Dispatcher]) -> None:
    d = start(make_batched(Limits(tpm=100)), running)
    fill = Ticket(Priority.NORMAL, Cost(1, 60))
    d.submit(fill)
    assert await granted(fill)
    big, small = Ticket(Priority.NORMAL, Cost(1, 45)), Ticket(Priority.NORMAL, Cost(1, 5))
    d.submit(big)
    d.submit(small)
    # Asked together, the small one would fit and overtake the big one.
    assert not await granted(small, within=0.3)
    assert (await used(d, "tokens/minute")) == 60


async def test_a_request_admits_itself_only_when_nothing_waits(running: list[Dispatcher]) -> None:
    d = start(make(Limits(tpm=100), inline=True), running)
    first = Ticket(Priority.NORMAL, Cost(1, 60))
    grant = await d.admit_now(first)
    assert grant is not None and grant.decision.allowed
    assert d.in_flight == 1
    big = Ticket(Priority.NORMAL, Cost(1, 50))
    assert await d.admit_now(big) is None, "does not fit: it must queue"
    d.submit(big)
    small = Ticket(Priority.NORMAL, Cost(1, 5))
    assert await d.admit_now(small) is None, "fits, but the big one waits before it"
    assert (await used(d, "tokens/minute")) == 60
    d.members[0].pause(10)
    d.cancel(big)
    assert await d.admit_now(small) is None, "paused"


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "on Redis"])
async def test_a_request_put_back_is_charged_once_in_the_fair_order(
    running: list[Dispatcher], request: pytest.FixtureRequest, shared: bool
) -> None:
    """Every request of tenant a meets an upstream 429 once and is put back; b's never do. a's
    share comes back with each put-back, so both are served alike (charged twice, a would get
    about a third)."""
    store: Store = EmbeddedStore()
    if shared:
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        store = RedisStore.from_url(url, prefix=prefix)
    member = budget(Limits(rpm=6000), concurrency=1, store=store)
    d = start(Dispatcher([member], TicketQueue(100), instance="one" if shared else None), running)
    a, b = Tenant("a", 1.0, Priority.HIGH), Tenant("b", 1.0, Priority.HIGH)
    share = share_of(1, 0, 6000, 0, 1.0)
    waiting = [Ticket(Priority.NORMAL, Cost(1, 0), who, share) for who in (a, b) for _ in range(12)]
    for ticket in waiting:
        d.submit(ticket)
    served: list[str] = []
    put_back: set[Ticket] = set()
    while len(served) < 16:
        futures = {t.future: t for t in waiting if t.future is not None and t.state is not State.OUT}
        done, _ = await asyncio.wait(futures, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert done, "nothing granted"
        for future in done:
            ticket, grant = futures[future], future.result()  # type: ignore[index]
            grant.release()
            ticket.state = State.OUT  # answered, or about to be put back with a new future
            if ticket.tenant is a and ticket not in put_back:
                put_back.add(ticket)
                await d.unserved(grant)
                d.requeue(ticket)
            else:
                assert ticket.tenant is not None
                served.append(ticket.tenant.name)
    assert abs(served.count("a") - served.count("b")) <= 1, served
    if shared:
        await store.close()
