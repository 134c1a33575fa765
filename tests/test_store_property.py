"""Random operation sequences against both stores and a brute-force model.

The embedded store and the Redis store must return identical decisions for the same
sequence. Both must also match a model that keeps every admission, charge and refund in
plain lists and re-sums them: the same allowed/denied (no over- and no under-admission),
the same usage, and the same exact wait before a denied cost fits. With refunds in the
window the stores' token wait is a lower bound (see ``Store.refund``): never longer than
the model's.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratelimit import Cost, Decision, EmbeddedStore, Limits, Policy, RedisStore
from ratelimit.fair_share import HOLD_MS, RETRY_MS, SLACK_MS, Ask
from ratelimit.store import TRIM_MAX

MINUTE = 60_000
HOUR = 3_600_000
ZONES = ["UTC", "Asia/Seoul", "America/New_York"]
# Days to start on, including both New York DST changes.
DAYS = ["2024-03-10", "2024-05-01", "2024-11-03", "2024-12-31"]


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def midnight_ms(day: str, zone: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(zone)).timestamp() * 1000)


@dataclass
class Model:
    """Every admission and charge in a list; every question answered by summing it."""

    limits: Limits
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (time, requests, tokens)
    # (admission time, requests, tokens, whether the admission was still in the window when
    # refunded)
    refunds: list[tuple[int, int, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.policy: Policy = self.limits.policy()
        self.tz = ZoneInfo(self.limits.daily_reset_tz)
        self.longest = max(w.length_ms for w in self.policy.windows)

    def refunded_in_window(self, at: int) -> int:
        return sum(t for a, _, t, live in self.refunds if live and a > at - self.longest)

    def requests_returned_in_window(self, at: int) -> int:
        return sum(r for a, r, _, live in self.refunds if live and a > at - self.longest)

    def day(self, at: int) -> tuple[int, int]:
        local = datetime.fromtimestamp(at / 1000, self.tz).date()
        start, end = (
            datetime.combine(d, datetime.min.time(), tzinfo=self.tz)
            for d in (local, local + timedelta(days=1))
        )
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)

    def usage(self, at: int) -> dict[str, int]:
        """What every limit holds at instant ``at`` (no new entries)."""
        used: dict[str, int] = {}
        for w in self.policy.windows:
            live = [e for e in self.entries if e[0] > at - w.length_ms]
            requests = sum(e[1] for e in live)
            tokens = sum(e[2] for e in live)
            if w.length_ms == self.longest:  # refunds count in the longest window
                tokens = max(0, tokens - self.refunded_in_window(at))
                requests = max(0, requests - self.requests_returned_in_window(at))
            used[f"requests/{w.name}"] = requests
            used[f"tokens/{w.name}"] = tokens
        start, end = self.day(at)
        today = [e for e in self.entries if start <= e[0] < end]
        used["requests/day"] = sum(e[1] for e in today) - sum(
            r for a, r, _, _ in self.refunds if start <= a < end
        )
        used["tokens/day"] = sum(e[2] for e in today) - sum(
            t for a, _, t, _ in self.refunds if start <= a < end
        )
        return used

    def limit_of(self) -> dict[str, tuple[int, bool]]:
        """Each limit's value and whether it counts requests (else tokens)."""
        return {
            name: (limit, name.startswith("requests"))
            for name, limit in zip(self.policy.limit_names(), self.policy.limit_values(), strict=True)
        }

    def fits(self, name: str, at: int, cost: Cost) -> bool:
        limit, is_requests = self.limit_of()[name]
        amount = cost.requests if is_requests else cost.tokens
        return not limit or self.usage(at)[name] + amount <= limit

    def wait(self, name: str, now: int, cost: Cost) -> int:
        """The earliest instant from ``now`` at which ``cost`` fits this one limit.

        Usage only changes when an entry leaves a window or a day ends, and never grows
        without an admission, so the answer is the first such instant at which it fits.
        """
        if self.fits(name, now, cost):
            return 0
        candidates = {self.day(now)[1]}
        for w in self.policy.windows:
            candidates |= {e[0] + w.length_ms for e in self.entries if e[0] + w.length_ms > now}
        ordered = sorted(candidates)
        if not self.fits(name, ordered[-1], cost):
            raise AssertionError("too large: never fits")
        lo, hi = 0, len(ordered) - 1  # fits() is false before some instant, true from it on
        while lo < hi:
            mid = (lo + hi) // 2
            if self.fits(name, ordered[mid], cost):
                hi = mid
            else:
                lo = mid + 1
        return ordered[lo] - now

    def forget_before(self, now: int) -> None:
        """Drop entries that no window and no day from ``now`` on can see again."""
        keep_from = min(self.day(now)[0], now - self.longest)
        self.entries = [e for e in self.entries if e[0] >= keep_from]
        self.refunds = [r for r in self.refunds if r[0] >= keep_from]

    def refund(
        self, now: int, tokens: int, admitted_at: int, requests: int = 0
    ) -> dict[str, tuple[int, int, int]]:
        """The states a store reports after a refund (it checks nothing: no waits)."""
        if tokens or requests:
            self.refunds.append((admitted_at, requests, tokens, admitted_at > now - self.longest))
        _, _, states = self.run("charge", now, Cost(0, 0))
        return states

    def run(self, op: str, now: int, cost: Cost) -> tuple[bool, int, dict[str, tuple[int, int, int]]]:
        """(allowed, wait, {limit: (used, wait, reset)}) as a store should answer."""
        self.forget_before(now)
        names = self.policy.limit_names()
        check = op in ("acquire", "peek")
        waits = {n: self.wait(n, now, cost) if check else 0 for n in names}
        wait = max(waits.values())
        allowed = op == "charge" or (check and wait == 0)
        if allowed and op != "peek" and (cost.requests or cost.tokens):
            self.entries.append((now, cost.requests, cost.tokens))
        used = self.usage(now)
        resets: dict[str, int] = {}
        newest = max((e[0] for e in self.entries), default=None)
        for w in self.policy.windows:
            reset = newest + w.length_ms - now if newest is not None and newest > now - w.length_ms else 0
            resets[f"requests/{w.name}"] = resets[f"tokens/{w.name}"] = reset
        resets["requests/day"] = resets["tokens/day"] = self.day(now)[1] - now
        return allowed, wait, {n: (used[n], waits[n], resets[n]) for n in names}


def assert_matches_model(model: Model, op: str, now: int, cost: Cost, got: Decision) -> None:
    refunds_live = model.refunded_in_window(now) > 0 or model.requests_returned_in_window(now) > 0
    allowed, wait, states = model.run(op, now, cost)
    what = f"{op} {cost} at {now}"
    if allowed and not got.allowed:
        raise AssertionError(f"under-admission: {what} fits the model but was denied: {got}")
    if got.allowed and not allowed:
        raise AssertionError(f"over-admission: {what} was admitted, the model denies it: {states}")
    seen = {s.name: (s.used, s.wait_ms, s.reset_ms) for s in got.states}
    if refunds_live:
        # The waits of the longest window may be shorter than the truth (a lower bound), never
        # longer.
        token_limits = {
            f"{unit}/{w.name}"
            for w in model.policy.windows
            if w.length_ms == model.longest
            for unit in ("tokens", "requests")
        }
        for name in token_limits:
            assert seen[name][1] <= states[name][1], f"{what}: {name} wait longer than the model's"
            seen[name] = (seen[name][0], -1, seen[name][2])
            states[name] = (states[name][0], -1, states[name][2])
        assert got.wait_ms <= wait, f"{what}: wait {got.wait_ms} longer than the model's {wait}"
    else:
        assert got.wait_ms == wait, f"{what}: wait {got.wait_ms} != model {wait}"
    assert seen == states, what


limits_st = st.builds(
    Limits,
    rpm=st.sampled_from([0, 1, 2, 3, 5, 12]),
    tpm=st.sampled_from([0, 10, 50, 100]),
    rpd=st.sampled_from([0, 0, 4, 9]),
    tpd=st.sampled_from([0, 0, 80, 300]),
    daily_reset_tz=st.sampled_from(ZONES),
    short_window_s=st.sampled_from([0, 0, 1, 10]),
    margin_ms=st.sampled_from([0, 0, 250]),
)
advance_st = st.one_of(
    st.just(0),
    st.integers(0, 50),
    st.integers(0, 5_000),
    st.sampled_from([999, 1_000, 1_001, 9_999, 10_000, 59_999, 60_000, 60_001, 60_250]),
    st.integers(0, 3 * HOUR),
    st.sampled_from(["wait", "wait-1"]),  # to the instant a denial named, or just before
)
op_st = st.tuples(
    advance_st,
    st.sampled_from(["acquire"] * 6 + ["peek", "charge", "refund"]),
    st.integers(0, 2),  # requests
    st.one_of(st.integers(0, 12), st.integers(0, 120)),  # tokens
    st.integers(0, 1000),  # which earlier admission a refund is for
)


@dataclass
class Scenario:
    limits: Limits
    start: int
    ops: list[tuple[int | str, str, int, int, int]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    limits = draw(limits_st)
    start = midnight_ms(draw(st.sampled_from(DAYS)), limits.daily_reset_tz) - draw(st.integers(0, 3 * MINUTE))
    return Scenario(limits, start, draw(st.lists(op_st, min_size=1, max_size=60)))


async def drive(redis_url: str, scenario: Scenario) -> tuple[int, int]:  # noqa: PLR0912
    """Run ``scenario`` on both stores (and the model); returns (admitted, denied) counts."""
    clock = Clock(scenario.start)
    embedded = EmbeddedStore(clock=clock)
    redis_store = RedisStore.from_url(redis_url, prefix=f"prop-{uuid.uuid4().hex[:12]}", clock=clock)
    policy = scenario.limits.policy()
    model = Model(scenario.limits)
    admitted: list[tuple[Decision, list[int]]] = []  # each with the tokens and requests it may still refund
    denied = 0
    last_wait = 0
    try:
        for advance, op, requests, tokens, target in scenario.ops:
            if advance == "wait":
                clock.now += last_wait
            elif advance == "wait-1":
                clock.now += max(0, last_wait - 1)
            else:
                assert isinstance(advance, int)
                clock.now += advance
            cost = Cost(requests, tokens)
            if op == "refund":
                if not admitted:
                    continue
                of, refundable = admitted[target % len(admitted)]
                amount = tokens % (refundable[0] + 1)  # never more than was charged
                back = requests % (refundable[1] + 1)
                refundable[0] -= amount
                refundable[1] -= back
                got = [await s.refund("k", policy, amount, of.now_ms, back) for s in (embedded, redis_store)]
                expected = model.refund(clock.now, amount, of.now_ms, back)
                assert {s.name: (s.used, s.wait_ms, s.reset_ms) for s in got[0].states} == expected
            elif op == "acquire" and policy.too_large(cost):
                continue  # callers refuse these before asking the store
            else:
                got = [await getattr(s, op)("k", policy, cost) for s in (embedded, redis_store)]
                if op == "peek" and policy.too_large(cost):
                    assert not got[0].allowed  # the model has no finite wait to compare
                else:
                    assert_matches_model(model, op, clock.now, cost, got[0])
            assert got[0] == got[1], f"stores disagree on {op} {cost}: {got[0]} != {got[1]}"
            assert got[0].now_ms == clock.now
            if op == "acquire" and got[0].allowed:
                admitted.append((got[0], [cost.tokens, cost.requests]))
            if op == "acquire" and not got[0].allowed:
                denied += 1
            if not got[0].allowed and got[0].wait_ms:
                last_wait = got[0].wait_ms
    finally:
        await redis_store.reset("k")
        await redis_store.close()
    return len(admitted), denied


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_stores_agree_with_each_other_and_the_model(redis_url: str, scenario: Scenario) -> None:
    asyncio.run(drive(redis_url, scenario))


@pytest.mark.parametrize(
    ("seed", "limits"),
    [
        # No request limit: bursts of hundreds of token-free entries leave at once, while
        # the token limits keep denying the rest.
        (1, Limits(tpm=3_000, tpd=40_000, daily_reset_tz="Asia/Seoul")),
        (2, Limits(tpm=3_000, tpd=40_000, daily_reset_tz="Asia/Seoul", margin_ms=250)),
        (3, Limits(rpm=120, tpm=5_000, rpd=900, short_window_s=10, daily_reset_tz="Asia/Seoul")),
    ],
)
def test_long_random_walk_with_trimming(redis_url: str, seed: int, limits: Limits) -> None:
    """Thousands of steps across midnight, with more than TRIM_MAX entries leaving at once
    so that trimming, the trimmed-base totals and the bounded per-call trim all take part."""
    rng = random.Random(seed)
    ops: list[tuple[int | str, str, int, int, int]] = []
    for _ in range(2_500):
        advance = rng.choices([0, 1, 40, 700, "wait", 31_000], [40, 20, 20, 10, 5, 2])[0]
        op = rng.choices(["acquire", "peek", "charge"], [12, 1, 1])[0]
        tokens = rng.choice([0, 0, rng.randint(0, 150)])
        ops.append((advance, op, 1, tokens, 0))
    start = midnight_ms("2024-05-01", "Asia/Seoul") - 5 * MINUTE
    admitted, denied = asyncio.run(drive(redis_url, Scenario(limits, start, ops)))
    assert admitted > 2 * TRIM_MAX
    assert denied > 0


fair_op_st = st.tuples(
    st.one_of(st.integers(0, 20), st.sampled_from([RETRY_MS, HOLD_MS, HOLD_MS + SLACK_MS, MINUTE + 1])),
    st.sampled_from(["one", "two", "three"]),  # instance
    st.sampled_from(["a", "b", "c"]),  # tenant
    st.integers(0, 2),  # class
    st.integers(0, 40),  # tokens
    st.sampled_from([0, 1, 7, 120, 500]),  # share (0: classes only)
    st.integers(-1, 2),  # its tenant's best class still waiting (-1: none)
    st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["a", "b", "c", "d"])), max_size=3),  # others
    st.sampled_from([False] * 5 + [True]),  # an admission not served: the share given back
    st.booleans(),  # whether it yields to its own instance's other tenants
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limits=st.builds(Limits, rpm=st.sampled_from([0, 3, 8]), tpm=st.sampled_from([0, 60, 200])),
    ops=st.lists(fair_op_st, min_size=1, max_size=60),
)
def test_stores_agree_on_fair_shares(redis_url: str, limits: Limits, ops: list[tuple[int, ...]]) -> None:
    """Instances asking with tenants, classes and what else waits there, and giving shares back:
    the embedded store and Redis give identical decisions (yields, tags, waits), and a yield never
    consumes."""

    async def run() -> None:
        clock = Clock(midnight_ms("2024-05-01", "UTC") + HOUR)
        embedded = EmbeddedStore(clock=clock)
        redis_store = RedisStore.from_url(redis_url, prefix=f"prop-{uuid.uuid4().hex[:12]}", clock=clock)
        policy = limits.policy()
        try:
            for advance, instance, tenant, priority, tokens, share, rest, others, back, own in ops:
                clock.now += advance
                cost = Cost(1, tokens)
                if policy.too_large(cost):
                    continue
                # Each other tenant once, at one class (as an instance's queue names them).
                named = tuple((c, t) for t, c in {t: c for c, t in others if t != tenant}.items())
                fair = Ask(str(tenant), int(priority), int(share), str(instance), int(rest), named, bool(own))
                if back:
                    given = [
                        await s.refund("k", policy, 0, clock.now, fair=fair) for s in (embedded, redis_store)
                    ]
                    assert given[0] == given[1], f"stores disagree on giving back {fair}"
                    continue
                got = [await s.acquire("k", policy, cost, fair) for s in (embedded, redis_store)]
                assert got[0] == got[1], f"stores disagree on {fair}: {got[0]} != {got[1]}"
                if got[0].yielded:
                    assert not got[0].allowed and got[0].binding is None
                    seen = await embedded.peek("k", policy)
                    assert [st.used for st in seen.states] == [st.used for st in got[0].states], "consumed"
        finally:
            await redis_store.reset("k")
            await redis_store.close()

    asyncio.run(run())
