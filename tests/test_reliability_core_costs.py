"""Costs at the edge of what the stores can count: both stores agree, refuse costs past the
bound alike, and no usage an upstream reports (10**15 tokens, or a stream of the largest
charges) can corrupt a budget: running totals stay inside the log's fixed-width members."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from ratelimit import Cost, EmbeddedStore, Limits, RedisStore
from ratelimit.limiter import Limiter
from ratelimit.limits import DAY_CAP, LIVE_CAP, MAX_COST, REBASE_AT
from ratelimit.redis_store import SCRIPT
from ratelimit.store import Store
from tests.test_store_conformance import MINUTE, START, ManualClock

LIMITS = Limits(rpm=10, tpm=0, rpd=0, tpd=0)


async def usage_after(store: EmbeddedStore | RedisStore, key: str, tokens: int) -> int:
    limiter = Limiter(LIMITS, store)
    await limiter.reset(key)
    try:
        decision = await limiter.acquire(key, Cost(1, tokens))
        return decision.state("tokens/minute").used
    finally:
        await limiter.reset(key)


@pytest.fixture
async def stores(redis_url: str, redis_prefix: str) -> AsyncIterator[tuple[ManualClock, list[Store]]]:
    clock = ManualClock()
    redis = RedisStore.from_url(redis_url, prefix=redis_prefix, clock=clock)
    try:
        yield clock, [EmbeddedStore(clock=clock), redis]
    finally:
        await redis.reset("budget")
        await redis.close()


async def test_the_largest_cost_a_valid_request_can_have_is_counted_alike(
    redis_url: str, redis_prefix: str
) -> None:
    # 128 choices of 2**31 - 1 tokens plus a 1 MiB prompt: what the wire schema still admits.
    tokens = 128 * (2**31 - 1) + 1_048_576
    assert tokens <= MAX_COST
    redis = RedisStore.from_url(redis_url, prefix=redis_prefix)
    try:
        assert await usage_after(redis, "edge", tokens) == tokens
    finally:
        await redis.close()
    assert await usage_after(EmbeddedStore(), "edge", tokens) == tokens


@pytest.mark.parametrize("cost", [Cost(1, 2**64), Cost(1, MAX_COST + 1), Cost(1, -1), Cost(-1, 0)])
async def test_costs_past_the_bound_are_refused_by_both_stores(
    cost: Cost, stores: tuple[ManualClock, list[Store]]
) -> None:
    _, both = stores
    for store in both:
        limiter = Limiter(LIMITS, store)
        with pytest.raises(ValueError, match="cost"):
            await limiter.acquire("budget", cost)
        assert (await limiter.peek("budget")).state("requests/minute").used == 0


Stores = tuple[ManualClock, list[Store]]


async def test_a_huge_reported_usage_does_not_freeze_the_budget(stores: Stores) -> None:
    clock, both = stores
    limits = Limits(rpm=10, tpm=1000, rpd=0, tpd=0)
    for store in both:
        limiter = Limiter(limits, store)
        clock.set(START)
        assert (await limiter.acquire("budget", Cost(1, 100))).allowed
        charged = await limiter.charge("budget", 10**15)
        assert charged.state("tokens/minute").used == 100 + MAX_COST
        assert not (await limiter.acquire("budget", Cost(1, 100))).allowed
        # One window later it has all left, as any cost does.
        clock.advance(MINUTE + 1000)
        after = await limiter.acquire("budget", Cost(1, 100))
        assert after.allowed, type(store).__name__
        assert after.state("tokens/minute").used == 100
        assert (await limiter.charge("budget", -5)).state("tokens/minute").used == 100


async def test_running_totals_are_renumbered_past_any_bound(stores: tuple[ManualClock, list[Store]]) -> None:
    """Charges of the largest size, window after window, carry the totals past REBASE_AT (and,
    unbounded, past the members' 15 digits): both stores renumber and keep deciding alike."""
    clock, both = stores
    limits = Limits(rpm=5, tpm=2 * MAX_COST + MAX_COST // 2, rpd=0, tpd=0)
    limiters = [Limiter(limits, store) for store in both]
    width = 10**15  # what 15 digits hold
    windows = width // (2 * MAX_COST) + 5
    for i in range(windows):
        at = START + i * (MINUTE + 1000)
        answers = []
        for limiter in limiters:
            clock.set(at)
            first = await limiter.acquire("budget", Cost(1, MAX_COST))
            more = await limiter.charge("budget", MAX_COST)
            clock.set(at + 10)
            denied = await limiter.acquire("budget", Cost(1, MAX_COST))
            answers.append((first, more.states, denied))
        (a_first, a_more, a_denied), (b_first, b_more, b_denied) = answers
        assert a_first == b_first and a_more == b_more and a_denied == b_denied, i
        assert a_first.allowed and a_first.state("tokens/minute").used == MAX_COST
        assert not a_denied.allowed and a_denied.state("tokens/minute").used == 2 * MAX_COST
    redis = both[1]
    assert isinstance(redis, RedisStore)
    members = await redis.redis.zrange(redis.keys("budget")[0], 0, -1)
    assert members and all(len(m) == 31 for m in members)
    state = (await redis.redis.get(redis.keys("budget")[1])).split()
    assert int(state[1]) < REBASE_AT + LIVE_CAP, "the totals were never renumbered"
    assert windows * 2 * MAX_COST > width


async def test_a_window_counts_at_most_the_live_cap(stores: tuple[ManualClock, list[Store]]) -> None:
    clock, both = stores
    for store in both:
        limiter = Limiter(Limits(rpm=0, tpm=0, rpd=0, tpd=0), store)
        clock.set(START)
        for _ in range(LIVE_CAP // MAX_COST + 3):
            decision = await limiter.charge("budget", MAX_COST)
        assert decision.state("tokens/minute").used == LIVE_CAP
        assert decision.state("tokens/day").used <= DAY_CAP
        await store.reset("budget")


def test_the_script_has_the_same_bounds() -> None:
    for name, value in (("LIVE_CAP", LIVE_CAP), ("REBASE_AT", REBASE_AT), ("DAY_CAP", DAY_CAP)):
        match = re.search(rf"local {name} = (\d+)", SCRIPT)
        assert match is not None and int(match[1]) == value, name
