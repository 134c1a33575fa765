"""A pool's dispatcher with several members (embedded store): earliest fit, in queue order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from apim_server.budget import OUT_AFTER_FAILURES
from apim_server.dispatcher import Dispatcher
from apim_server.queue import Priority, Ticket, TicketQueue
from apim_server.store_health import StoreHealth
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost, Limits
from tests.test_apim_dispatcher import budget, granted


@pytest.fixture
async def pool() -> AsyncIterator[list[Dispatcher]]:
    started: list[Dispatcher] = []
    yield started
    for d in started:
        await d.stop()


def make(started: list[Dispatcher], *limits: Limits) -> Dispatcher:
    members = [budget(lim, name=f"d{i}") for i, lim in enumerate(limits)]
    d = Dispatcher(members, TicketQueue(100))
    d.start()
    started.append(d)
    return d


def on(t: Ticket) -> str:
    assert t.future is not None
    return t.future.result().budget.deployment.name


async def test_the_first_member_that_fits_admits(pool: list[Dispatcher]) -> None:
    d = make(pool, Limits(rpm=2), Limits(rpm=2))
    tickets = [Ticket(Priority.NORMAL, Cost(1, 0)) for _ in range(4)]
    for t in tickets:
        d.submit(t)
    assert all([await granted(t) for t in tickets])
    assert [on(t) for t in tickets] == ["d0", "d0", "d1", "d1"]


async def test_when_none_fits_the_head_goes_to_whichever_frees_first(pool: list[Dispatcher]) -> None:
    # d0 frees in a minute, d1 (1 s sub-windows) in about a second.
    d = make(pool, Limits(rpm=1), Limits(rpm=60, short_window_s=1))
    first, second, third = (Ticket(Priority.NORMAL, Cost(1, 0)) for _ in range(3))
    for t in (first, second):
        d.submit(t)
    assert await granted(first) and await granted(second)
    assert [on(first), on(second)] == ["d0", "d1"]
    d.submit(third)
    assert not await granted(third, within=0.3)
    assert await granted(third, within=3)
    assert on(third) == "d1"


async def test_a_paused_or_failed_member_is_skipped(pool: list[Dispatcher]) -> None:
    d = make(pool, Limits(rpm=100), Limits(rpm=100))
    d.members[0].pause(30)
    t = Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(t)
    assert await granted(t)
    assert on(t) == "d1"
    for _ in range(OUT_AFTER_FAILURES):
        d.members[1].deployment.failed("ConnectError", 0.01)
    assert d.members[1].deployment.out
    blocked = Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(blocked)
    assert not await granted(blocked, within=0.3), "d0 paused, d1 taken out"
    d.members[0].paused_until = 0.0
    d.wake()  # pauses only ever extend: a test that lifts one says so
    assert await granted(blocked, within=1)
    assert on(blocked) == "d0"


async def test_a_deployment_back_from_a_time_out_takes_one_probe_first(pool: list[Dispatcher]) -> None:
    d = make(pool, Limits(rpm=100))
    deployment = d.members[0].deployment
    for _ in range(OUT_AFTER_FAILURES):
        deployment.failed("HTTP 503", 0.0)
    deployment.cooling_until = 0.0  # the time out is over
    probe, next_one = Ticket(Priority.NORMAL, Cost(1, 0)), Ticket(Priority.NORMAL, Cost(1, 0))
    d.submit(probe)
    d.submit(next_one)
    assert await granted(probe)
    assert not await granted(next_one, within=0.3), "the rest wait for the probe's answer"
    deployment.answered()
    assert await granted(next_one, within=1)
    assert not deployment.out and deployment.failures == 0


async def test_requests_of_another_pool_never_wait(pool: list[Dispatcher]) -> None:
    full = make(pool, Limits(rpm=1))
    free = make(pool, Limits(rpm=100))
    filler, stuck = Ticket(Priority.NORMAL, Cost(1, 0)), Ticket(Priority.NORMAL, Cost(1, 0))
    full.submit(filler)
    full.submit(stuck)
    assert await granted(filler)
    others = [Ticket(Priority.NORMAL, Cost(1, 0)) for _ in range(5)]
    for t in others:
        free.submit(t)
    assert all([await granted(t, within=1) for t in others])
    assert not stuck.future.done()  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def test_every_pool_waits_on_the_one_store_health(pool: list[Dispatcher]) -> None:
    health = StoreHealth(EmbeddedStore(), window_s=60)
    pools = [Dispatcher([budget(Limits(rpm=100), name=f"p{i}")], TicketQueue(10), health) for i in range(2)]
    for d in pools:
        d.start()
        pool.append(d)
    health.failed(ConnectionError("test: the store went away"))
    tickets = [Ticket(Priority.NORMAL, Cost(1, 0)) for _ in pools]
    for d, t in zip(pools, tickets, strict=True):
        d.submit(t)
    assert not any([await granted(t, within=0.3) for t in tickets]), "nothing admitted while it is down"
    health.hold_until = time.monotonic() + 0.5  # as a restart that lost the record would set
    await health.check()  # the store answers: the owner says so once, for every pool
    assert health.down_since is None
    assert not any(t.future.done() for t in tickets), "held for the promised time"  # type: ignore[union-attr]
    assert all([await granted(t, within=2) for t in tickets])
