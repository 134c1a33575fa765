"""One conformance suite, run against the embedded store and the Redis store alike.

Every test drives a store through an injected clock, so window edges are checked to the
millisecond without sleeping. Redis tests use a real server and a key prefix of their own.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError

from ratelimit import Cost, Decision, EmbeddedStore, Limits, Policy, RedisStore, Store
from ratelimit.fair_share import HOLD_MS, RETRY_MS, SLACK_MS, Ask
from ratelimit.redis_store import SCRIPT
from ratelimit.store import TRIM_MAX, args, decode, wire
from tests.processes import private_redis
from tests.topologies import Cluster

START = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC: mid-day in UTC, far from any midnight
MINUTE = 60_000
HOUR = 3_600_000
KEY = "budget"


class ManualClock:
    """Milliseconds that move only when a test says so."""

    def __init__(self, now: int = START) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now

    def set(self, now: int) -> None:
        self.now = now

    def advance(self, ms: int) -> None:
        self.now += ms


def utc_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def policy(**limits: int | str) -> Policy:
    return Limits(**limits).policy()  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["embedded", "redis", "cluster"])
async def store(request: pytest.FixtureRequest, clock: ManualClock) -> AsyncIterator[Store]:
    """Each store kind: in-process, one Redis, and a Redis Cluster reached through one of its
    replicas (the client must find every budget's master by itself)."""
    if request.param == "embedded":
        yield EmbeddedStore(clock=clock)
        return
    if request.param == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        url = cluster.replica_of(cluster.owner("x")).url
    else:
        url = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    redis_store = RedisStore.from_url(url, prefix=prefix, clock=clock)
    client = await redis_store.client()
    assert isinstance(client, RedisCluster) == (request.param == "cluster")
    try:
        yield redis_store
    finally:
        keys = [k async for k in redis_store.redis.scan_iter(match=f"{{{prefix}:*")]
        for k in keys:
            await redis_store.redis.delete(k)
        await redis_store.close()


def twin(store: Store, clock: ManualClock) -> Store:
    """A second handle on the same budgets: separate connections for Redis."""
    if isinstance(store, RedisStore):
        return RedisStore.from_url(store.connection.url, prefix=store.prefix, clock=clock)
    return store


def live_entries(store: Store, key: str = KEY) -> int:
    """How many log entries the store holds for ``key`` (not yet trimmed)."""
    assert isinstance(store, EmbeddedStore)
    budget = store._budgets[key]
    return len(budget.times) - budget.head


async def log_size(store: Store, key: str = KEY) -> int:
    if isinstance(store, RedisStore):
        return int(await store.redis.zcard(store.keys(key)[0]))
    return live_entries(store, key)


async def step(store: Store, key: str, argv: list[int | str], pol: Policy) -> Decision:
    """Run one raw argument vector (as the Lua script takes it) through ``store``."""
    if isinstance(store, RedisStore):
        keys = store.keys(key)
        raw = await store.redis.eval(SCRIPT, len(keys), *keys, wire(argv))
        return decode(pol, raw)
    assert isinstance(store, EmbeddedStore)
    return decode(pol, store._step(key, argv))


# --- sliding windows: the edge is exact to the millisecond ---------------------------------


async def test_request_leaves_exactly_one_window_later(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=2)
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    clock.advance(10)
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed

    clock.set(START + MINUTE - 1)
    look = await store.peek(KEY, pol)
    assert look.state("requests/minute").used == 2
    denied = await store.acquire(KEY, pol, Cost(1, 0))
    assert not denied.allowed
    assert denied.wait_ms == 1
    assert denied.state("requests/minute").wait_ms == 1

    clock.set(START + MINUTE)
    assert (await store.peek(KEY, pol)).state("requests/minute").used == 1
    admitted = await store.acquire(KEY, pol, Cost(1, 0))
    assert admitted.allowed
    assert admitted.state("requests/minute").used == 2


async def test_tokens_leave_exactly_one_window_later(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000)
    assert (await store.acquire(KEY, pol, Cost(1, 600))).allowed
    clock.advance(1)
    denied = await store.acquire(KEY, pol, Cost(1, 500))
    assert not denied.allowed
    assert denied.wait_ms == MINUTE - 1
    assert denied.state("tokens/minute").used == 600

    clock.set(START + MINUTE - 1)
    assert not (await store.acquire(KEY, pol, Cost(1, 500))).allowed
    assert (await store.peek(KEY, pol)).state("tokens/minute").used == 600

    clock.set(START + MINUTE)
    assert (await store.peek(KEY, pol)).state("tokens/minute").used == 0
    admitted = await store.acquire(KEY, pol, Cost(1, 500))
    assert admitted.allowed
    assert admitted.state("tokens/minute").used == 500


async def test_reset_time_is_when_the_newest_entry_leaves(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=10, tpm=1000)
    await store.acquire(KEY, pol, Cost(1, 100))
    clock.advance(15_000)
    await store.acquire(KEY, pol, Cost(1, 100))
    clock.advance(5_000)
    look = await store.peek(KEY, pol)
    assert look.state("requests/minute").reset_ms == MINUTE - 5_000
    assert look.state("tokens/minute").reset_ms == MINUTE - 5_000
    clock.advance(MINUTE)
    assert (await store.peek(KEY, pol)).state("tokens/minute").reset_ms == 0


# --- daily windows: fixed, from midnight in a zone -------------------------------------------


async def test_daily_requests_reset_at_midnight_in_seoul(store: Store, clock: ManualClock) -> None:
    pol = policy(rpd=2, daily_reset_tz="Asia/Seoul")
    midnight = utc_ms("2024-04-30T15:00:00")  # 2024-05-01 00:00 in Seoul
    clock.set(midnight - 30_000)
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    denied = await store.acquire(KEY, pol, Cost(1, 0))
    assert not denied.allowed
    assert denied.wait_ms == 30_000
    assert denied.state("requests/day").reset_ms == 30_000

    clock.set(midnight - 1)
    assert not (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    clock.set(midnight)
    admitted = await store.acquire(KEY, pol, Cost(1, 0))
    assert admitted.allowed
    # A fixed window: yesterday's requests, 30 s old, no longer count.
    assert admitted.state("requests/day").used == 1
    assert admitted.state("requests/day").reset_ms == 24 * HOUR


async def test_daily_tokens_reset_at_midnight_in_seoul(store: Store, clock: ManualClock) -> None:
    pol = policy(tpd=1000, tpm=5000, daily_reset_tz="Asia/Seoul")
    midnight = utc_ms("2024-04-30T15:00:00")
    clock.set(midnight - 30_000)
    assert (await store.acquire(KEY, pol, Cost(1, 600))).allowed
    denied = await store.acquire(KEY, pol, Cost(1, 500))
    assert not denied.allowed
    assert denied.wait_ms == 30_000
    assert denied.state("tokens/day").wait_ms == 30_000
    assert denied.state("tokens/minute").wait_ms == 0

    clock.set(midnight)
    admitted = await store.acquire(KEY, pol, Cost(1, 500))
    assert admitted.allowed
    assert admitted.state("tokens/day").used == 500
    # The sliding minute still holds the admission from before midnight.
    assert admitted.state("tokens/minute").used == 1100


@pytest.mark.parametrize(
    ("midnight", "next_midnight"),
    [
        ("2024-03-10T05:00:00", "2024-03-11T04:00:00"),  # spring forward: a 23-hour day
        ("2024-11-03T04:00:00", "2024-11-04T05:00:00"),  # fall back: a 25-hour day
        ("2024-07-01T04:00:00", "2024-07-02T04:00:00"),  # an ordinary summer day
    ],
)
async def test_daily_reset_in_new_york_across_dst(
    store: Store, clock: ManualClock, midnight: str, next_midnight: str
) -> None:
    pol = policy(rpd=1, tpd=100, daily_reset_tz="America/New_York")
    start, end = utc_ms(midnight), utc_ms(next_midnight)
    clock.set(start)
    first = await store.acquire(KEY, pol, Cost(1, 10))
    assert first.allowed
    assert first.state("requests/day").reset_ms == end - start

    clock.set(start + 2 * HOUR)
    denied = await store.acquire(KEY, pol, Cost(1, 10))
    assert not denied.allowed
    assert denied.wait_ms == end - start - 2 * HOUR

    clock.set(end - 1)
    assert not (await store.acquire(KEY, pol, Cost(1, 10))).allowed
    clock.set(end)
    admitted = await store.acquire(KEY, pol, Cost(1, 100))
    assert admitted.allowed
    assert admitted.state("tokens/day").used == 100


async def test_day_follows_store_time_not_caller_time(store: Store) -> None:
    """Redis time may differ from ours by a little: the store picks the day that holds its own
    clock among the bounds we send, on either side of midnight."""
    pol = policy(rpd=1, daily_reset_tz="Asia/Seoul")
    midnight = utc_ms("2024-04-30T15:00:00")
    before, after = midnight - 1000, midnight + 1000
    for now, ref in ((before, after), (before, before - 12 * HOUR), (before, before)):
        got = await step(store, f"{KEY}-{now}-{ref}", args(pol, "acquire", Cost(1, 0), now, ref), pol)
        assert got.allowed
        assert got.state("requests/day").reset_ms == midnight - now
    # Once the store's clock is past midnight, it is a new day even if the caller's is not.
    key = f"{KEY}-cross"
    assert (await step(store, key, args(pol, "acquire", Cost(1, 0), before, before), pol)).allowed
    late = await step(store, key, args(pol, "acquire", Cost(1, 0), after, before), pol)
    assert late.allowed
    assert late.state("requests/day").used == 1
    assert late.state("requests/day").reset_ms == 24 * HOUR - 1000
    # Midnight itself belongs to the new day, whichever side the caller is on.
    for ref in (before, midnight, after):
        key = f"{KEY}-midnight-{ref}"
        assert (await step(store, key, args(pol, "acquire", Cost(1, 0), midnight - 1, ref), pol)).allowed
        at_midnight = await step(store, key, args(pol, "acquire", Cost(1, 0), midnight, ref), pol)
        assert at_midnight.allowed
        assert at_midnight.state("requests/day").reset_ms == 24 * HOUR


# --- atomicity: concurrent callers never over- or under-admit -------------------------------


@pytest.mark.parametrize(
    ("limits", "cost", "expected"),
    [
        ({"rpm": 50, "tpm": 100_000}, Cost(1, 100), 50),  # requests bind
        ({"rpm": 500, "tpm": 5_000}, Cost(1, 50), 100),  # tokens bind
        ({"rpd": 37, "tpd": 100_000}, Cost(1, 10), 37),  # the day binds
    ],
)
async def test_concurrent_admissions_admit_exactly_the_limit(
    store: Store, clock: ManualClock, limits: dict[str, int], cost: Cost, expected: int
) -> None:
    pol = policy(**limits)
    other = twin(store, clock)
    callers = [store, other]
    try:
        results = await asyncio.gather(*(callers[i % 2].acquire(KEY, pol, cost) for i in range(200)))
    finally:
        if other is not store:
            await other.close()
    assert sum(d.allowed for d in results) == expected
    look = await store.peek(KEY, pol)
    assert look.state("requests/minute").used == expected
    assert look.state("tokens/minute").used == expected * cost.tokens
    assert look.state("requests/day").used == expected


async def test_redis_server_time_admits_exactly_the_limit_across_connections(
    redis_url: str, redis_prefix: str
) -> None:
    """Without an injected clock both handles use Redis TIME; 200 racing callers on separate
    connection pools share one budget."""
    pol = policy(rpm=60, tpm=6_000)
    stores = [RedisStore.from_url(redis_url, prefix=redis_prefix) for _ in range(2)]
    try:
        results = await asyncio.gather(*(stores[i % 2].acquire(KEY, pol, Cost(1, 100)) for i in range(200)))
        assert sum(d.allowed for d in results) == 60
        assert all(d.wait_ms > 0 for d in results if not d.allowed)
        server_s, _ = await stores[0].redis.time()
        assert all(abs(d.now_ms - server_s * 1000) < MINUTE for d in results)
    finally:
        await stores[0].reset(KEY)
        for s in stores:
            await s.close()


# --- a denial says exactly when the request fits ---------------------------------------------


async def assert_fits_exactly_after(store: Store, clock: ManualClock, pol: Policy, cost: Cost) -> int:
    """Deny now with wait W; still denied at W-1; admitted at W. Returns W."""
    denied = await store.acquire(KEY, pol, cost)
    assert not denied.allowed
    wait = denied.wait_ms
    assert wait > 0
    start = clock.now
    clock.set(start + wait - 1)
    again = await store.acquire(KEY, pol, cost)
    assert not again.allowed
    assert again.wait_ms == 1
    clock.set(start + wait)
    assert (await store.acquire(KEY, pol, cost)).allowed
    return wait


async def test_wait_is_exact_for_requests(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=3)
    for _ in range(3):
        assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
        clock.advance(100)
    assert await assert_fits_exactly_after(store, clock, pol, Cost(1, 0)) == MINUTE - 300


async def test_wait_is_exact_for_weighted_tokens(store: Store, clock: ManualClock) -> None:
    """600 tokens need the two oldest entries (200 + 300) to leave, not just the first."""
    pol = policy(tpm=1000)
    for tokens in (200, 300, 400):
        assert (await store.acquire(KEY, pol, Cost(1, tokens))).allowed
        clock.advance(1000)
    assert await assert_fits_exactly_after(store, clock, pol, Cost(1, 600)) == MINUTE + 1000 - 3000


async def test_wait_is_the_longest_of_all_limits(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=2, tpm=1000)
    await store.acquire(KEY, pol, Cost(1, 900))
    clock.advance(5_000)
    await store.acquire(KEY, pol, Cost(1, 50))
    clock.advance(5_000)
    # Requests fit once the first entry leaves (50 s); 990 tokens need both gone (55 s).
    denied = await store.acquire(KEY, pol, Cost(1, 990))
    assert denied.state("requests/minute").wait_ms == MINUTE - 10_000
    assert denied.state("tokens/minute").wait_ms == MINUTE - 5_000
    assert denied.binding is not None
    assert denied.binding.name == "tokens/minute"
    assert denied.wait_ms == MINUTE - 5_000
    clock.advance(denied.wait_ms - 1)
    assert not (await store.acquire(KEY, pol, Cost(1, 990))).allowed
    clock.advance(1)
    assert (await store.acquire(KEY, pol, Cost(1, 990))).allowed


async def test_wait_counts_entries_sharing_one_millisecond(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=100)
    for tokens in (10, 20, 30, 40):
        assert (await store.acquire(KEY, pol, Cost(1, tokens))).allowed
    clock.advance(10)
    assert await assert_fits_exactly_after(store, clock, pol, Cost(1, 5)) == MINUTE - 10


# --- all or nothing ---------------------------------------------------------------------------


async def test_a_denial_consumes_nothing_on_any_limit(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=60, tpm=1000, rpd=100, tpd=2000, short_window_s=10)
    assert (await store.acquire(KEY, pol, Cost(1, 900))).allowed
    before = await store.peek(KEY, pol)

    denied = await store.acquire(KEY, pol, Cost(1, 200))  # tokens/minute denies
    assert not denied.allowed
    assert [s.name for s in denied.states if s.wait_ms] == ["tokens/minute"]
    after = await store.peek(KEY, pol)
    assert [s.used for s in after.states] == [s.used for s in before.states]

    # The day denies while the minute would allow: the minute consumes nothing either.
    clock.advance(MINUTE)
    day_pol = policy(rpm=10, tpm=1000, rpd=100, tpd=1000)
    denied = await store.acquire(KEY, day_pol, Cost(1, 200))
    assert not denied.allowed
    assert [s.name for s in denied.states if s.wait_ms] == ["tokens/day"]
    look = await store.peek(KEY, day_pol)
    assert look.state("requests/minute").used == 0
    assert look.state("requests/day").used == 1
    assert look.state("tokens/day").used == 900


# --- accounting: charge the excess, refund on opt-in ----------------------------------------


async def test_charge_consumes_unconditionally(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=10, tpm=1000, tpd=5000)
    admitted = await store.acquire(KEY, pol, Cost(1, 800))
    assert admitted.allowed
    clock.advance(1000)
    # The answer used 500 tokens more than estimated: over the limit, charged all the same.
    charged = await store.charge(KEY, pol, Cost(0, 500))
    assert charged.allowed
    assert charged.wait_ms == 0
    assert charged.state("tokens/minute").used == 1300
    assert charged.state("requests/minute").used == 1
    assert charged.state("tokens/day").used == 1300
    assert charged.state("tokens/minute").remaining == 0

    clock.advance(1000)
    # 600 tokens fit only once the admission and the excess have both left.
    assert await assert_fits_exactly_after(store, clock, pol, Cost(1, 600)) == MINUTE - 1000


async def test_refund_returns_tokens_and_leaves_with_its_admission(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000, tpd=10_000)
    first = await store.acquire(KEY, pol, Cost(1, 800))
    clock.advance(10_000)
    assert not (await store.acquire(KEY, pol, Cost(1, 700))).allowed

    refunded = await store.refund(KEY, pol, 500, first.now_ms)
    assert refunded.state("tokens/minute").used == 300
    assert refunded.state("tokens/day").used == 300
    second = await store.acquire(KEY, pol, Cost(1, 700))
    assert second.allowed
    assert second.state("tokens/minute").used == 1000

    # The first admission leaves with its refund: what remains is exactly the second one.
    clock.set(first.now_ms + MINUTE - 1)
    assert (await store.peek(KEY, pol)).state("tokens/minute").used == 1000
    clock.set(first.now_ms + MINUTE)
    look = await store.peek(KEY, pol)
    assert look.state("tokens/minute").used == 700
    assert (await store.acquire(KEY, pol, Cost(1, 300))).allowed
    assert not (await store.acquire(KEY, pol, Cost(1, 1))).allowed


async def test_refund_after_the_window_only_returns_daily_tokens(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000, tpd=10_000)
    first = await store.acquire(KEY, pol, Cost(1, 800))
    clock.advance(MINUTE)
    later = await store.acquire(KEY, pol, Cost(1, 100))
    refunded = await store.refund(KEY, pol, 500, first.now_ms)
    # The minute no longer holds the first admission, so nothing comes off the later one.
    assert refunded.state("tokens/minute").used == 100
    assert refunded.state("tokens/day").used == 400
    clock.set(later.now_ms + MINUTE)
    assert (await store.peek(KEY, pol)).state("tokens/minute").used == 0


async def test_refund_of_yesterday_leaves_today_alone(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000, tpd=1000, daily_reset_tz="Asia/Seoul")
    midnight = utc_ms("2024-04-30T15:00:00")
    clock.set(midnight - 1000)
    first = await store.acquire(KEY, pol, Cost(1, 600))
    clock.set(midnight)
    today = await store.acquire(KEY, pol, Cost(1, 300))
    assert today.state("tokens/day").used == 300
    refunded = await store.refund(KEY, pol, 400, first.now_ms)
    assert refunded.state("tokens/day").used == 300
    assert refunded.state("tokens/minute").used == 500


async def test_several_refunds_leave_one_by_one(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000)
    admissions = []
    for _ in range(3):
        admissions.append(await store.acquire(KEY, pol, Cost(1, 300)))
        clock.advance(1000)
    # Refunds arrive out of order, as answers finish.
    for decision, tokens in zip(reversed(admissions), (50, 100, 200), strict=True):
        await store.refund(KEY, pol, tokens, decision.now_ms)
    assert (await store.peek(KEY, pol)).state("tokens/minute").used == 900 - 350
    expected_after = [900 - 300 - (350 - 200), 300 - 50, 0]
    for decision, expected in zip(admissions, expected_after, strict=True):
        clock.set(decision.now_ms + MINUTE)
        assert (await store.peek(KEY, pol)).state("tokens/minute").used == expected


async def test_refunds_leave_while_admissions_continue(store: Store, clock: ManualClock) -> None:
    """Each refund leaves exactly once, with its admission, while new admissions keep
    writing (and trimming) the budget."""
    pol = policy(tpm=1000)
    admissions = []
    for _ in range(3):
        admissions.append(await store.acquire(KEY, pol, Cost(1, 300)))
        clock.advance(1000)
    for decision in admissions:
        await store.refund(KEY, pol, 100, decision.now_ms)
    expected = [600 - 200 + 10, 300 + 10 - 100 + 10, 10 + 10 + 10]
    for decision, used in zip(admissions, expected, strict=True):
        clock.set(decision.now_ms + MINUTE)
        got = await store.acquire(KEY, pol, Cost(1, 10))
        assert got.state("tokens/minute").used == used
    clock.set(admissions[-1].now_ms + MINUTE + 5000)
    assert (await store.peek(KEY, pol)).state("tokens/minute").used == 30
    assert (await store.acquire(KEY, pol, Cost(1, 970))).allowed


async def test_with_refunds_the_wait_is_never_too_long(store: Store, clock: ManualClock) -> None:
    """A refund leaves with its admission, so the first admission's leaving frees only its
    net cost: the wait a denial names is a lower bound, never more than the truth."""
    pol = policy(tpm=1000)
    first = await store.acquire(KEY, pol, Cost(1, 600))
    await store.refund(KEY, pol, 500, first.now_ms)
    clock.advance(1000)
    await store.acquire(KEY, pol, Cost(1, 800))
    clock.advance(1000)
    denied = await store.acquire(KEY, pol, Cost(1, 400))
    assert denied.wait_ms == MINUTE - 2000  # when the first admission leaves
    clock.advance(denied.wait_ms - 1)
    assert not (await store.acquire(KEY, pol, Cost(1, 400))).allowed
    clock.advance(1)
    again = await store.acquire(KEY, pol, Cost(1, 400))
    assert not again.allowed  # only 100 net left with it: 800 still in the window
    assert again.wait_ms == 1000  # no refunds left in the window: exact again
    clock.advance(1000)
    assert (await store.acquire(KEY, pol, Cost(1, 400))).allowed


async def test_a_refunded_budget_is_fully_usable(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000)
    first = await store.acquire(KEY, pol, Cost(1, 1000))
    await store.refund(KEY, pol, 600, first.now_ms)
    assert (await store.acquire(KEY, pol, Cost(1, 600))).allowed
    assert not (await store.acquire(KEY, pol, Cost(1, 1))).allowed


async def test_an_admission_given_back_whole_frees_its_request_and_tokens(
    store: Store, clock: ManualClock
) -> None:
    """What a two-step admission needs when its second step says no: the first step's request and
    tokens come back, in the window and in the day, and nothing else changes."""
    pol = policy(rpm=2, tpm=100, rpd=3)
    first = await store.acquire(KEY, pol, Cost(1, 60))
    assert (await store.acquire(KEY, pol, Cost(1, 40))).allowed
    assert not (await store.acquire(KEY, pol, Cost(1, 1))).allowed
    back = await store.refund(KEY, pol, 60, first.now_ms, requests=1)
    assert back.state("requests/minute").used == 1
    assert back.state("tokens/minute").used == 40
    assert back.state("requests/day").used == 1
    assert (await store.acquire(KEY, pol, Cost(1, 60))).allowed, "exactly its place again"
    assert not (await store.acquire(KEY, pol, Cost(1, 0))).allowed, "and no more"
    # The returned request leaves the window with its admission: the budget is whole after it.
    clock.advance(MINUTE)
    after = await store.peek(KEY, pol)
    assert after.state("requests/minute").used == 0
    assert after.state("tokens/minute").used == 0
    assert after.state("requests/day").used == 2


# --- fair shares across instances (ratelimit.fair_share) ---------------------------------------


def ask(
    tenant: str,
    priority: int,
    instance: str,
    share: int = 100,
    rest: int = -1,
    others: tuple[tuple[int, str], ...] = (),
    own: bool = True,
) -> Ask:
    return Ask(tenant, priority, share, instance, rest, others, own)


async def test_an_admission_yields_to_another_instances_better_class(
    store: Store, clock: ManualClock
) -> None:
    pol = policy(tpm=100)
    assert (await store.acquire(KEY, pol, Cost(1, 60))).allowed
    # Instance two's high head does not fit yet: it is registered as waiting.
    big = await store.acquire(KEY, pol, Cost(1, 50), ask("b", 0, "two"))
    assert not big.allowed and not big.yielded
    # Instance one's normal request fits the limits, but yields to it, and consumes nothing.
    small = await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))
    assert not small.allowed and small.yielded
    assert small.binding is None, "no limit binds: a yield"
    assert 0 < small.wait_ms <= HOLD_MS
    assert small.state("tokens/minute").used == 60
    # An instance's own entry is replaced by what it asks with, never held against it.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "two"))).allowed
    # A high request of another tenant, level with b, is not behind it.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("c", 0, "one"))).allowed


async def test_within_a_class_the_tenant_served_least_goes_first(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000)
    for _ in range(3):
        done = await store.acquire(KEY, pol, Cost(1, 100), ask("a", 1, "one", share=100))
        assert done.allowed
    assert (done.finish, done.vtime) == (300, 200)
    assert not (await store.acquire(KEY, pol, Cost(1, 800), ask("b", 1, "two"))).allowed  # fits not
    # b (start 200) is ahead of a (start 300): a yields; c (start 200, level with b) does not.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))).yielded
    level = await store.acquire(KEY, pol, Cost(1, 10), ask("c", 1, "one", share=50))
    assert level.allowed and (level.finish, level.vtime) == (250, 200)
    # A lower class yields to b whatever its tenant has had.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("d", 2, "one"))).yielded


async def test_every_waiting_tenant_of_an_instance_counts_not_only_its_head(
    store: Store, clock: ManualClock
) -> None:
    pol = policy(tpm=1000)
    for tenant, share in (("a", 100), ("b", 400), ("c", 50)):
        assert (await store.acquire(KEY, pol, Cost(1, 100), ask(tenant, 1, "one", share=share))).allowed
    # Instance two asks for b (start 400), which does not fit; c (start 50) waits there too.
    assert not (await store.acquire(KEY, pol, Cost(1, 800), ask("b", 1, "two", others=((1, "c"),)))).allowed
    # a (start 100) is behind c though ahead of b: it yields until instance two asks again.
    behind = await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))
    assert behind.yielded and behind.wait_ms > RETRY_MS
    # Once instance two asks with nothing else waiting, its entry names nobody else.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("c", 1, "two"))).allowed
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))).allowed


async def test_a_stale_pick_yields_at_once_with_the_tags_to_pick_again(
    store: Store, clock: ManualClock
) -> None:
    """An instance asks for a while its own b is ahead by the record (another instance served a
    meanwhile): a yield of no wait, consuming nothing, with b's tag to put its order right."""
    pol = policy(tpm=1000)
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("b", 1, "two", share=30))).allowed
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "two", share=100))).allowed
    stale = await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one", share=100, others=((1, "b"),)))
    assert stale.yielded and not stale.allowed and stale.wait_ms == 0
    assert (stale.finish, stale.vtime, stale.tags) == (100, 0, (30,))
    assert stale.state("tokens/minute").used == 20
    right = await store.acquire(KEY, pol, Cost(1, 10), ask("b", 1, "one", share=30, others=((1, "a"),)))
    assert right.allowed and (right.finish, right.vtime, right.tags) == (60, 30, (100,))
    # A better class of its own is ahead whatever the tags; a worse one never is.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one", others=((0, "c"),)))).yielded
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("b", 1, "one", others=((2, "c"),)))).allowed
    # An instance whose pool keeps an order of its own (several budgets) is not held to this one's.
    behind = await store.acquire(KEY, pol, Cost(1, 0), ask("b", 1, "one", others=((1, "a"),)))
    assert behind.yielded and behind.wait_ms == 0
    mine = await store.acquire(KEY, pol, Cost(1, 0), ask("b", 1, "one", others=((1, "a"),), own=False))
    assert mine.allowed


async def test_an_ask_without_share_orders_by_class_alone(store: Store, clock: ManualClock) -> None:
    """A gateway without tenants: one implicit tenant, priorities across instances, no tags."""
    pol = policy(tpm=100)
    assert (await store.acquire(KEY, pol, Cost(1, 60))).allowed
    waiting = await store.acquire(KEY, pol, Cost(1, 50), ask("(none)", 0, "two", share=0))
    assert not waiting.allowed and not waiting.yielded
    normal = await store.acquire(KEY, pol, Cost(1, 10), ask("(none)", 1, "one", share=0))
    assert normal.yielded and normal.wait_ms > 0
    done = await store.acquire(KEY, pol, Cost(1, 10), ask("(none)", 0, "one", share=0, rest=1))
    assert done.allowed and (done.finish, done.vtime) == (0, 0), "no tags kept"
    # Instance one's normal request now waits there too: instance two's normal goes level with it.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("(none)", 1, "two", share=0))).allowed


async def test_a_waiting_entry_lapses_on_its_own(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=100)
    assert (await store.acquire(KEY, pol, Cost(1, 60))).allowed
    assert not (await store.acquire(KEY, pol, Cost(1, 50), ask("b", 0, "gone"))).allowed
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))).yielded
    # The instance that registered it never asks again (it stopped): past its time and the slack,
    # nobody yields to it.
    clock.advance(HOLD_MS + SLACK_MS)
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))).allowed


async def test_an_admitted_ask_registers_what_still_waits_or_clears(store: Store, clock: ManualClock) -> None:
    pol = policy(tpm=1000)
    first = await store.acquire(KEY, pol, Cost(1, 10), ask("b", 0, "two", rest=0))
    assert first.allowed
    # Instance two has another high request waiting: it asks again at once.
    later = await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))
    assert later.yielded and later.wait_ms == RETRY_MS
    # Its queue is empty after its next admission: the entry goes.
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("b", 0, "two"))).allowed
    assert (await store.acquire(KEY, pol, Cost(1, 10), ask("a", 1, "one"))).allowed


async def test_tags_start_level_after_a_window_without_admissions(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=100)
    for _ in range(5):
        assert (await store.acquire(KEY, pol, Cost(1, 0), ask("a", 1, "one", share=10))).allowed
    clock.advance(MINUTE)
    assert (await store.acquire(KEY, pol, Cost(1, 0), ask("b", 1, "one", share=10))).finish == 50
    clock.advance(MINUTE + 1)
    fresh = await store.acquire(KEY, pol, Cost(1, 0), ask("a", 1, "one", share=10, others=((1, "b"),)))
    assert (fresh.finish, fresh.vtime, fresh.tags) == (10, 0, (0,))


async def test_a_share_given_back_puts_the_tenant_where_it_was(store: Store, clock: ManualClock) -> None:
    """An admission that was not served (an upstream 429): the tenant's share comes off its tag
    again; the request and tokens stay counted (the upstream may have counted them)."""
    pol = policy(tpm=1000)
    for tenant in ("a", "b", "a"):
        assert (await store.acquire(KEY, pol, Cost(1, 100), ask(tenant, 1, "one", share=100))).allowed
    clock.advance(5)
    back = await store.refund(KEY, pol, 0, START, fair=ask("a", 1, "one", share=100))
    assert (back.yielded, back.tags) == (False, ())
    assert back.state("tokens/minute").used == 300
    # a is level with b again (start 100 each): b's ask is not behind it, and a's next admission
    # ends where its unserved one did.
    again = await store.acquire(KEY, pol, Cost(1, 100), ask("a", 1, "one", share=100, others=((1, "b"),)))
    assert again.allowed and (again.finish, again.tags) == (200, (100,))
    # Never below zero; nothing to give back once a new busy period has begun.
    await store.refund(KEY, pol, 0, START, fair=ask("b", 1, "one", share=500))
    assert (await store.acquire(KEY, pol, Cost(1, 0), ask("b", 1, "one", share=1))).finish == 101
    clock.advance(MINUTE + 1)
    await store.refund(KEY, pol, 0, START, fair=ask("a", 1, "one", share=100))
    assert (await store.acquire(KEY, pol, Cost(1, 0), ask("a", 1, "one", share=7))).finish == 7


async def test_a_registry_entry_of_another_form_counts_as_lapsed(store: Store, clock: ManualClock) -> None:
    """Gateways of another version on the same Redis (a rolling upgrade) write entries this script
    does not read: they hold nobody back and break no admission."""
    if not isinstance(store, RedisStore):
        pytest.skip("only the Redis store keeps the registry as text")
    client = await store.client()
    waits = store.fair_keys(KEY)[4]
    await client.hset(waits, "older", f"0 b {START + MINUTE} {START + MINUTE}")
    done = await store.acquire(KEY, policy(rpm=10), Cost(1, 0), ask("a", 1, "one"))
    assert done.allowed and not done.yielded
    assert not await client.hexists(waits, "older")


async def test_calls_without_an_ask_answer_as_before(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=5)
    plain = await store.acquire(KEY, pol, Cost(1, 0))
    assert (plain.yielded, plain.finish, plain.vtime, plain.tags) == (False, 0, 0, ())
    assert not (await store.acquire(KEY, pol, Cost(1, 0), ask("b", 0, "two", share=1))).yielded
    # A registered head holds back asks only: a plain call is not part of the fair order.
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed


# --- no under-admission -----------------------------------------------------------------------


async def test_the_full_budget_is_usable_again_and_again(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=5, tpm=1000)
    for _window in range(3):
        for tokens in (100, 250, 50, 600):
            assert (await store.acquire(KEY, pol, Cost(1, tokens))).allowed
            clock.advance(7)
        assert not (await store.acquire(KEY, pol, Cost(1, 1))).allowed
        assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed  # the fifth request
        assert not (await store.acquire(KEY, pol, Cost(1, 0))).allowed
        clock.advance(MINUTE)


async def test_too_large_is_detected_before_the_store(store: Store) -> None:
    pol = policy(rpm=10, tpm=1000, tpd=800)
    assert pol.too_large(Cost(1, 800)) is None
    big = pol.too_large(Cost(1, 900))
    assert big is not None
    assert (big.name, big.limit) == ("tokens/day", 800)
    huge = pol.too_large(Cost(1, 1001))
    assert huge is not None
    assert (huge.name, huge.limit) == ("tokens/minute", 1000)
    assert policy(tpm=0).too_large(Cost(1, 10**9)) is None
    # The store never admits it either, and consumes nothing trying.
    assert not (await store.acquire(KEY, pol, Cost(1, 1001))).allowed
    assert (await store.peek(KEY, pol)).state("tokens/day").used == 0


# --- Azure-style sub-windows and the gateway's margin -----------------------------------------


async def test_short_window_spreads_rpm_over_seconds(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=600, short_window_s=1)
    assert [w.name for w in pol.windows] == ["minute", "1s"]
    for i in range(10):
        clock.set(START + i * 10)
        assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    clock.set(START + 100)
    denied = await store.acquire(KEY, pol, Cost(1, 0))
    assert not denied.allowed
    assert denied.binding is not None
    assert denied.binding.name == "requests/1s"
    assert denied.state("requests/minute").wait_ms == 0
    assert await assert_fits_exactly_after(store, clock, pol, Cost(1, 0)) == 900


async def test_short_window_allows_the_minute_to_fill(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=60, short_window_s=10)  # 10 per 10 s
    for second in range(60):
        clock.set(START + second * 1000)
        assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    clock.set(START + 59_500)
    denied = await store.acquire(KEY, pol, Cost(1, 0))
    assert denied.state("requests/minute").wait_ms == 500
    assert denied.state("requests/10s").wait_ms == 500


async def test_margin_lengthens_every_window(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=1, short_window_s=1, margin_ms=250)
    assert [w.length_ms for w in pol.windows] == [MINUTE + 250, 1250]
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    clock.set(START + MINUTE)
    assert (await store.acquire(KEY, pol, Cost(1, 0))).wait_ms == 250
    assert await assert_fits_exactly_after(store, clock, pol, Cost(1, 0)) == 250


# --- peek, reset, clock, growth --------------------------------------------------------------


async def test_peek_does_not_consume(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=2, tpm=100, rpd=5, tpd=500)
    for _ in range(5):
        look = await store.peek(KEY, pol, Cost(1, 60))
        assert look.allowed  # it would fit now ...
        assert look.wait_ms == 0
        assert all(s.used == 0 for s in look.states)  # ... and nothing was consumed
    await store.acquire(KEY, pol, Cost(1, 60))
    look = await store.peek(KEY, pol, Cost(1, 60))
    assert not look.allowed
    assert look.state("tokens/minute").wait_ms == MINUTE
    assert look.state("tokens/minute").used == 60
    assert (await store.acquire(KEY, pol, Cost(1, 40))).allowed


async def test_reset_forgets_the_budget(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=1, tpd=100)
    await store.acquire(KEY, pol, Cost(1, 100))
    await store.acquire("other", pol, Cost(1, 100))
    await store.reset(KEY)
    admitted = await store.acquire(KEY, pol, Cost(1, 100))
    assert admitted.allowed
    assert admitted.state("tokens/day").used == 100
    assert not (await store.acquire("other", pol, Cost(1, 1))).allowed


async def test_budgets_are_independent_per_key(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=1)
    assert (await store.acquire("a", pol, Cost(1, 0))).allowed
    assert (await store.acquire("b", pol, Cost(1, 0))).allowed
    assert not (await store.acquire("a", pol, Cost(1, 0))).allowed


async def test_clock_never_runs_backwards_for_a_key(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=2)
    clock.set(START + 10_000)
    assert (await store.acquire(KEY, pol, Cost(1, 0))).now_ms == START + 10_000
    clock.set(START + 5_000)  # e.g. Redis failed over to a host whose clock is behind
    second = await store.acquire(KEY, pol, Cost(1, 0))
    assert second.now_ms == START + 10_000
    # Both admissions are stamped at the later time, so neither leaves early.
    clock.set(START + 10_000 + MINUTE - 1)
    assert not (await store.acquire(KEY, pol, Cost(1, 0))).allowed
    clock.set(START + 10_000 + MINUTE)
    assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed


async def test_the_log_is_trimmed_as_windows_pass(store: Store, clock: ManualClock) -> None:
    pol = policy(rpm=100, tpm=10_000)
    for _window in range(30):
        for _ in range(20):
            assert (await store.acquire(KEY, pol, Cost(1, 10))).allowed
            clock.advance(100)
        clock.advance(MINUTE)
    # 600 admissions over 30 windows: only the last window's (and the next trim's) remain.
    assert await log_size(store) <= 20 + 1
    look = await store.peek(KEY, pol)
    assert look.state("requests/minute").used == 0


async def test_a_long_quiet_spell_is_trimmed_a_bounded_amount_per_call(
    store: Store, clock: ManualClock
) -> None:
    pol = policy(tpm=10**9)
    for _ in range(TRIM_MAX * 3):
        await store.acquire(KEY, pol, Cost(1, 1))
    clock.advance(MINUTE)
    await store.acquire(KEY, pol, Cost(1, 1))
    assert await log_size(store) == TRIM_MAX * 2 + 1
    for _ in range(3):
        await store.acquire(KEY, pol, Cost(1, 1))
    assert await log_size(store) == 4
    assert (await store.peek(KEY, pol)).state("requests/minute").used == 4


async def test_redis_keys_expire(store: Store, clock: ManualClock) -> None:
    if not isinstance(store, RedisStore):
        pytest.skip("Redis key expiry")
    pol = policy(rpm=10, tpm=1000, daily_reset_tz="UTC")
    first = await store.acquire(KEY, pol, Cost(1, 100))
    await store.refund(KEY, pol, 50, first.now_ms)
    day_end = utc_ms("2023-11-15T00:00:00")
    longest_life = day_end - START + MINUTE
    for name in store.keys(KEY):
        ttl = await store.redis.pttl(name)
        assert 0 < ttl <= longest_life


async def test_embedded_store_forgets_idle_budgets(clock: ManualClock) -> None:
    store = EmbeddedStore(clock=clock)
    pol = policy(rpm=10, tpd=1000)
    for i in range(100):
        await store.acquire(f"key-{i}", pol, Cost(1, 10))
    clock.advance(2 * 24 * HOUR)
    await store.acquire("fresh", pol, Cost(1, 10))
    assert list(store._budgets) == ["fresh"]


async def test_embedded_log_memory_is_bounded(clock: ManualClock) -> None:
    store = EmbeddedStore(clock=clock)
    pol = policy(tpm=10**9)
    for _ in range(20):
        for _ in range(500):
            await store.acquire(KEY, pol, Cost(1, 1))
            clock.advance(1)
        clock.advance(MINUTE)
    budget = store._budgets[KEY]
    assert live_entries(store) <= 501
    assert len(budget.times) < 3000


async def test_redis_recovers_from_a_flushed_script_cache(clock: ManualClock) -> None:
    # SCRIPT FLUSH empties the server's cache for every user: only on a Redis of our own.
    with private_redis() as url:
        if url is None:
            pytest.skip("needs redis-server to start a Redis of its own")
        store = RedisStore.from_url(url, prefix="flush", clock=clock)
        try:
            pol = policy(rpm=30)
            assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed
            await store.redis.script_flush()
            # Concurrent callers share one pipeline: every call in it reloads and succeeds.
            batch = await asyncio.gather(*(store.acquire(KEY, pol, Cost(1, 0)) for _ in range(20)))
            assert all(d.allowed for d in batch)
            await store.redis.script_flush()
            assert (await store.acquire(KEY, pol, Cost(1, 0))).allowed  # a lone caller, too
            assert (await store.peek(KEY, pol)).state("requests/minute").used == 22
        finally:
            await store.close()


@pytest.mark.parametrize("victim", [1, 4])
async def test_a_cancelled_caller_does_not_disturb_its_batch(
    store: Store, clock: ManualClock, victim: int
) -> None:
    """The first caller goes alone; the others, arriving while it is under way, share one
    pipeline. One of them that gives up before it is sent (the one that sends the batch,
    or any other) consumes nothing, and the rest are admitted as usual."""
    if not isinstance(store, RedisStore):
        pytest.skip("the embedded store answers without yielding: nothing to batch")
    pol = policy(rpm=100)
    tasks = [asyncio.ensure_future(store.acquire(KEY, pol, Cost(1, 0))) for _ in range(10)]
    await asyncio.sleep(0)  # every task has started and is waiting for its batch
    tasks[victim].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[victim], asyncio.CancelledError)
    others = [r for i, r in enumerate(results) if i != victim]
    assert all(isinstance(r, Decision) and r.allowed for r in others)
    assert (await store.peek(KEY, pol)).state("requests/minute").used == 9


async def test_redis_unreachable_fails_every_caller(clock: ManualClock) -> None:
    from tests.processes import free_port  # noqa: PLC0415 - only this test needs it

    store = RedisStore.from_url(f"redis://127.0.0.1:{free_port()}/0", clock=clock, timeout_s=2)
    try:
        assert not await store.ping()
        alone = await asyncio.gather(store.acquire(KEY, policy(rpm=1), Cost(1, 0)), return_exceptions=True)
        batch = await asyncio.gather(
            *(store.acquire(KEY, policy(rpm=1), Cost(1, 0)) for _ in range(5)), return_exceptions=True
        )
        for result in alone + batch:
            assert isinstance(result, RedisConnectionError | OSError), result
    finally:
        await store.close()


async def test_a_silent_redis_times_out(clock: ManualClock) -> None:
    """A server that accepts and never answers: every call ends with TimeoutError."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", clock=clock, timeout_s=0.3)
    try:
        assert not await store.ping()
        results = await asyncio.gather(
            *(store.acquire(KEY, policy(rpm=1), Cost(1, 0)) for _ in range(4)), return_exceptions=True
        )
        assert all(isinstance(r, TimeoutError) for r in results), results
    finally:
        await store.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_keys_share_one_hash_tag(redis_url: str, redis_prefix: str) -> None:
    store = RedisStore.from_url(redis_url, prefix=redis_prefix)
    try:
        tags = {name[name.index("{") : name.index("}") + 1] for name in store.keys("user:42")}
        assert tags == {f"{{{redis_prefix}:user:42}}"}
    finally:
        await store.close()


def test_the_suite_never_flushes_a_redis_it_did_not_start() -> None:
    """A user's Redis may be shared: flushing commands only inside ``private_redis()``."""
    flushing = ("script_flush", "flushall", "flushdb", "SCRIPT FLUSH", "FLUSHALL", "FLUSHDB")
    for path in Path(__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            source = ast.get_source_segment(path.read_text(), node) or ""
            body = source.split('"""', 2)[-1] if source.count('"""') >= 2 else source
            if node.name in ("private_redis", "test_the_suite_never_flushes_a_redis_it_did_not_start"):
                continue
            if any(word in body for word in flushing):
                assert "private_redis()" in body, f"{path.name}: {node.name} flushes a shared Redis"
