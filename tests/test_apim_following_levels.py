"""How the gateway reads the upstream's figures and turns them into the levels a budget follows:
the header reader, capacity 429s, limit and room levels (down at once, up slowly, never above the
configured limit or to 0), one budget serving several models, lapses, and the shared record on a
real Redis. Real budgets on real stores; the end-to-end behaviour is in test_apim_following."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
import redis

from apim_server import follow_levels
from apim_server.budget import Budget, Deployment
from apim_server.config import Settings
from apim_server.config_file import ANY_MODEL, from_settings
from apim_server.follow_record import FollowRecords, Level
from apim_server.following import Following
from apim_server.metrics import Metrics
from apim_server.upstream import Upstream, capacity_429, remaining_and_reset
from openai_wire.headers import UpstreamFigures, read_ratelimit
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost, Limits
from ratelimit.redis_store import RedisStore
from ratelimit.store import Store
from tests.topologies import Cluster

TPM = 10_000
RPM = 100


def figures(limit: int | None = None, remaining: int | None = None, kind: str = "tokens") -> dict[str, str]:
    out = {}
    if limit is not None:
        out[f"x-ratelimit-limit-{kind}"] = str(limit)
    if remaining is not None:
        out[f"x-ratelimit-remaining-{kind}"] = str(remaining)
    return out


def make_budget(store: Store, model: str = "m", limits: Limits | None = None) -> Budget:
    plan = from_settings(Settings(_env_file=None)).deployments[0]
    deployment = Deployment(plan, Upstream(plan.url, "", 1, 1.0), 1024)
    return Budget(deployment, model, limits or Limits(rpm=RPM, tpm=TPM), store)


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


class SteppedClock:
    """The clock the answers' evidence is timed with, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the wire ---------------------------------------------------------------------------------


def test_the_header_reader_keeps_only_plain_counts() -> None:
    openai_style = {
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "499",
        "x-ratelimit-reset-requests": "120ms",
        "x-ratelimit-limit-tokens": "30000",
        "x-ratelimit-remaining-tokens": "29000",
        "x-ratelimit-reset-tokens": "2s",
    }
    read = read_ratelimit(openai_style)
    assert read == {
        "requests": UpstreamFigures(500, 499, "120ms"),
        "tokens": UpstreamFigures(30000, 29000, "2s"),
    }
    assert (read["requests"].reset_s, read["tokens"].reset_s) == (0.12, 2.0)
    assert read_ratelimit({"X-RateLimit-Limit-Tokens": "7"}) == {"tokens": UpstreamFigures(7, None, None)}
    azure_style = {"x-ratelimit-remaining-requests": "79", "x-ratelimit-remaining-tokens": "61353"}
    assert read_ratelimit(azure_style) == {
        "requests": UpstreamFigures(None, 79, None),
        "tokens": UpstreamFigures(None, 61353, None),
    }
    for bad in (
        {"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1"},
        {"x-ratelimit-limit-tokens": "0"},
        {"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "30001"},
        {"x-ratelimit-limit-tokens": "30000", "x-ratelimit-remaining-tokens": "1.5"},
        {"x-ratelimit-limit-tokens": "3e4"},
        {"x-ratelimit-limit-tokens": "1" + "0" * 20},
        {"x-ratelimit-remaining-tokens": "٣"},
        {"x-ratelimit-remaining-tokens": ""},
    ):
        assert read_ratelimit(bad) == {}, bad
    # Azure's 0 left without a reset lasts the fallback, not "reset now".
    assert remaining_and_reset({"x-ratelimit-remaining-tokens": "0"}, 10.0) == [("tokens", 0, 10.0)]
    assert remaining_and_reset({"x-ratelimit-remaining-tokens": "-1"}, 10.0) == []


def test_capacity_429s_are_told_from_rate_limit_429s() -> None:
    def body(message: str, **error: object) -> bytes:
        return json.dumps({"error": {"message": message, **error}}).encode()

    assert capacity_429(
        body(
            "The system is currently experiencing high demand and cannot process your request. Your request "
            "exceeds the maximum usage size allowed during peak load. Please retry after 6 seconds.",
            code="429",
        )
    )
    assert capacity_429(body("That model is currently overloaded with other requests.", type="server_error"))
    assert not capacity_429(body("Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 30000"))
    assert not capacity_429(
        body(
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
            "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."
        )
    )
    assert not capacity_429(b"not json")
    assert not capacity_429(b'{"error": "overloaded"}')


# --- limit levels -----------------------------------------------------------------------------


def test_a_lower_limit_is_followed_never_above_the_configured_one() -> None:
    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store)
        following = Following([budget], store, Metrics())
        decision = await budget.acquire(Cost(1, 100))
        following.observe(budget, figures(limit=4000, remaining=3900), decision, "m")
        assert budget.limiter.limits.tpm == 4000
        assert budget.limiter.limits.rpm == RPM
        assert budget.key.endswith(Limits(rpm=RPM, tpm=TPM).fingerprint()), "the record stays the same"
        # Above the upstream's own limit: too large now, as the upstream would say.
        assert budget.limiter.too_large(Cost(1, 4001)) is not None
        assert (await budget.peek()).state("tokens/minute").used == 100
        # A figure above the configured limit is never taken up; the configured one ends it.
        following.observe(budget, figures(limit=TPM * 2, remaining=TPM * 2 - 200), decision, "m")
        assert budget.limiter.limits.tpm == TPM
        following.observe(budget, figures(limit=4000, remaining=3900), decision, "m")
        following.observe(budget, figures(limit=TPM, remaining=TPM - 100), decision, "m")
        assert budget.limiter.limits == budget.configured
        assert following.status(budget) is None

    run(scenario())


def test_a_limit_the_budget_does_not_keep_is_not_taken_up() -> None:
    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store, limits=Limits(rpm=0, tpm=TPM))
        following = Following([budget], store, Metrics())
        decision = await budget.acquire(Cost(1, 100))
        following.observe(budget, figures(limit=10, remaining=3, kind="requests"), decision, "m")
        assert budget.limiter.limits == budget.configured

    run(scenario())


def test_one_budget_for_every_model_follows_the_lowest_and_its_model_ends_it() -> None:
    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store, model=ANY_MODEL)
        following = Following([budget], store, Metrics())
        decision = await budget.acquire(Cost(1, 100))
        following.observe(budget, figures(limit=3000), decision, "gpt-4o")
        following.observe(budget, figures(limit=TPM), decision, "gpt-4o-mini")  # its own, higher limit
        following.observe(budget, figures(limit=5000), decision, "gpt-4o-mini")
        assert budget.limiter.limits.tpm == 3000
        status = following.status(budget)
        assert status is not None and status["limits"]["tpm"]["model"] == "gpt-4o"
        following.observe(budget, figures(limit=TPM), decision, "gpt-4o")
        assert budget.limiter.limits.tpm == TPM

    run(scenario())


def test_a_level_lapses_without_answers_that_confirm_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store)
        following = Following([budget], store, Metrics())
        decision = await budget.acquire(Cost(1, 100))
        following.observe(budget, figures(limit=4000), decision, "m")
        assert budget.limiter.limits.tpm == 4000
        later = follow_levels.now_ms() + follow_levels.LIMIT_HOLD_MS + 1
        monkeypatch.setattr(follow_levels, "now_ms", lambda: later)
        await following.tick()
        assert budget.limiter.limits == budget.configured

    with caplog.at_level(logging.WARNING, logger="apim.following"):
        run(scenario())
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 2
    assert "follows the upstream's figures: tpm 4000 (configured 10000)" in said[0]
    assert "back to its configured limits" in said[1]


# --- room levels ------------------------------------------------------------------------------


def test_less_room_upstream_becomes_a_level_without_charging_anything() -> None:
    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store)
        following = Following([budget], store, Metrics())
        decision = await budget.acquire(Cost(1, 1000))
        # Someone else spent 6000: the upstream leaves 3000 where our record leaves 9000.
        following.observe(budget, figures(limit=TPM, remaining=3000), decision, "m")
        assert budget.limiter.limits.tpm == 4000  # what is left upstream plus what we hold
        assert (await budget.peek()).state("tokens/minute").used == 1000, "nothing charged"
        # Bigger than what is left now, not than the limit: it waits, it is not "too large".
        assert budget.limiter.too_large(Cost(1, 5000)) is None
        assert not (await budget.peek(Cost(1, 5000))).allowed
        # Every answer reporting the same gap sets the same level: nothing is counted twice.
        for _ in range(5):
            following.observe(budget, figures(limit=TPM, remaining=3000), decision, "m")
        assert budget.limiter.limits.tpm == 4000
        status = following.status(budget)
        assert status is not None and status["limits"]["tpm"]["reason"] == "room"

    run(scenario())


def test_a_room_level_rises_only_to_what_the_answers_said_over_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(follow_levels, "_monotonic", clock)

    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store)
        following = Following([budget], store, Metrics())
        first = await budget.acquire(Cost(1, 1000))
        following.observe(budget, figures(remaining=3000), first, "m")
        assert budget.limiter.limits.tpm == 4000
        # A burst's first answer overstates the room (others of ours not yet counted upstream).
        following.observe(budget, figures(remaining=5000), first, "m")
        assert budget.limiter.limits.tpm == 4000
        clock.now += follow_levels.RISE_S * 0.6
        following.observe(budget, figures(remaining=4000), first, "m")
        assert budget.limiter.limits.tpm == 5000, "the least the answers said over the while"
        clock.now += follow_levels.RISE_S * 1.5
        following.observe(budget, figures(remaining=8990), first, "m")
        clock.now += follow_levels.RISE_S * 0.6
        following.observe(budget, figures(remaining=9000), first, "m")
        assert budget.limiter.limits == budget.configured, "back: the other spending left the window"

    run(scenario())


def test_nothing_left_upstream_is_a_level_of_one_and_a_pause() -> None:
    async def scenario() -> None:
        store = EmbeddedStore()
        budget = make_budget(store)
        metrics = Metrics()
        following = Following([budget], store, metrics)
        decision = await budget.acquire(Cost(0, 0))
        headers = figures(limit=TPM, remaining=0) | {"x-ratelimit-reset-tokens": "3s"}
        following.observe(budget, headers, decision, "m")
        assert budget.limiter.limits.tpm == 1, "0 would read as no limit"
        assert 2.5 < budget.paused_for <= 3.0
        assert metrics.drift_pauses._value.get() == 1

    run(scenario())


def test_a_refusal_with_nothing_left_sets_the_level_its_retry_after_implies() -> None:
    """Azure sends no limit: its 429 says 0 left (clamped: not by how much it is over) and when
    the request would fit. The level is the least limit under which our record agrees."""

    async def scenario() -> None:
        now = [1_000_000_000_000]
        store = EmbeddedStore(clock=lambda: now[0])
        budget = make_budget(store, limits=Limits(rpm=RPM, tpm=TPM, margin_ms=500))
        following = Following([budget], store, Metrics())
        for _ in range(6):
            await budget.acquire(Cost(1, 1000))
        now[0] += 30_000
        await budget.acquire(Cost(1, 2000))
        now[0] += 10_000
        refused = Cost(1, 1000)
        decision = await budget.acquire(refused)  # the upstream refuses it: its limit was lowered
        headers = {"x-ratelimit-remaining-tokens": "0", "retry-after-ms": "20000"}
        following.observe(budget, headers, decision, "m", refused=refused)
        await following.drain()
        # In 20 s the first 6000 have left the upstream's 60 s window (ours holds them 0.5 s more):
        # 2000 + 1000 (this one, still counted here) remain, and it must fit once more.
        assert budget.limiter.limits.tpm == 4000
        status = following.status(budget)
        assert status is not None and status["limits"]["tpm"]["reason"] == "room"
        # A wait past a whole window (a daily quota) says nothing of the minute's limit.
        other = make_budget(EmbeddedStore(), model="n")
        quiet = Following([other], other.limiter.store, Metrics())
        first = await other.acquire(refused)
        quiet.observe(
            other, {"x-ratelimit-remaining-tokens": "0", "retry-after": "86400"}, first, "n", refused=refused
        )
        await quiet.drain()
        assert other.limiter.limits.tpm == TPM

    run(scenario())


# --- shared between instances -----------------------------------------------------------------


@pytest.fixture
def redis_store(redis_url: str, redis_prefix: str) -> Iterator[RedisStore]:
    yield RedisStore(redis.asyncio.Redis.from_url(redis_url), prefix=redis_prefix)


def test_instances_share_levels_and_their_end_through_the_record(
    redis_store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(follow_levels, "_monotonic", clock)

    async def scenario() -> None:
        mine, theirs = make_budget(redis_store), make_budget(redis_store)
        first, second = Following([mine], redis_store, Metrics()), Following([theirs], redis_store, Metrics())
        decision = await mine.acquire(Cost(1, 100))
        first.observe(mine, figures(limit=4000), decision, "m")
        await first.drain()  # the write goes in the background
        await second.tick()
        assert theirs.limiter.limits.tpm == 4000
        assert second.status(theirs) is not None
        # Someone else's spending, seen by the second: confirmed by a fresh read, then shared.
        second.observe(theirs, figures(limit=4000, remaining=1000), decision, "m")
        await second.drain()
        assert theirs.limiter.limits.tpm == 1100
        await first.tick()
        assert mine.limiter.limits.tpm == 1100
        # The end of a level travels too (a room level's once the answers say so for a while).
        first.observe(mine, figures(limit=TPM, remaining=TPM - 100), decision, "m")
        clock.now += follow_levels.RISE_S * 0.6
        first.observe(mine, figures(limit=TPM, remaining=TPM - 100), decision, "m")
        assert mine.limiter.limits == mine.configured
        await first.drain()
        await second.tick()
        assert theirs.limiter.limits == theirs.configured
        stored = await FollowRecords(redis_store).read([mine.key])
        assert {f: level.value for f, level in stored[mine.key].items()} == {
            "tpm.limit": None,
            "tpm.room": None,
        }
        await redis_store.close()

    run(scenario())


def test_a_malformed_stored_level_is_ignored(redis_store: RedisStore) -> None:
    async def scenario() -> None:
        budget = make_budget(redis_store)
        records = FollowRecords(redis_store)
        client = await redis_store.client()
        await client.hset(
            records.key(budget.key),
            mapping={
                "tpm.limit": "{not json",
                "tpm.room": json.dumps({"v": 0, "m": "m", "s": 0, "u": 0, "t": 2**50}),
            },
        )
        following = Following([budget], redis_store, Metrics())
        await following.tick()
        assert budget.limiter.limits == budget.configured
        assert Level.loads(b'{"v": 5, "m": "m", "s": 1, "u": 2, "t": 3}') == Level(5, "m", 1, 2, 3)
        await client.delete(records.key(budget.key))
        await redis_store.close()

    run(scenario())


def test_the_shared_record_spans_slots_on_a_redis_cluster(redis_cluster: Cluster, redis_prefix: str) -> None:
    """Budgets in different slots (on different masters) are read in one pipeline per node."""

    async def scenario() -> None:
        store = RedisStore.from_url(redis_cluster.url(0), prefix=redis_prefix)
        budgets = [make_budget(store, model=f"m{i}") for i in range(6)]
        writer = Following(budgets, store, Metrics())
        reader = Following([make_budget(store, model=f"m{i}") for i in range(6)], store, Metrics())
        for i, budget in enumerate(budgets):
            decision = await budget.acquire(Cost(1, 10))
            writer.observe(budget, figures(limit=1000 + i), decision, f"m{i}")
        await writer.drain()
        await reader.tick()
        assert [t.budget.limiter.limits.tpm for t in reader.trackers.values()] == [1000 + i for i in range(6)]
        await store.close()

    run(scenario())
