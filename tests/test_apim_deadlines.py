"""Deadlines and priorities: a request that cannot fit before its deadline is told so at once,
with when it would fit; it never holds back the requests behind it; per-class queue capacity;
aging. End to end with real processes, real Redis and the official SDK, plus the orderings
that are hard to see from outside on the dispatcher itself."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest

from apim_server.deadline import Unfittable, predict, timeout_s
from apim_server.dispatcher import Dispatcher
from apim_server.queue import Priority, QueueFull, Ticket, TicketQueue
from apim_server.routing import Pool
from openai_wire.errors import APIError
from ratelimit.limits import Cost, Limits
from tests.processes import Service
from tests.test_apim_dispatcher import budget, granted, running, start  # noqa: F401 - fixture
from tests.test_apim_e2e import MESSAGES, MODEL, Background, chat, gateway, metric, mock, on_redis, wait_for


@pytest.fixture(scope="module")
def upstream() -> Service:
    with mock() as service:
        yield service  # type: ignore[misc]


def timed(service: Service, timeout_ms: int, **body: object) -> httpx.Response:
    return chat(service, headers={"x-apim-timeout-ms": str(timeout_ms)}, **body)


# --- the caller's timeout ------------------------------------------------------------------------


def test_timeout_header_is_read_and_never_beyond_the_operators() -> None:
    assert timeout_s({}, 300) == 300
    assert timeout_s({"x-apim-timeout-ms": "10000"}, 300) == 10
    assert timeout_s({"x-apim-timeout-ms": "900000"}, 300) == 300
    for bad in ("", "abc", "-5", "0", "1.5", "1e3", "\uff11\uff12"):  # the last: full-width digits
        with pytest.raises(APIError) as caught:
            timeout_s({"x-apim-timeout-ms": bad}, 300)
        assert caught.value.status == 400


def test_a_bad_timeout_header_is_a_400_in_openais_shape(upstream: Service) -> None:
    with gateway(upstream) as gw:
        answer = chat(gw, headers={"x-apim-timeout-ms": "soon"})
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["param"] == "x-apim-timeout-ms"
        assert error["code"] == "invalid_timeout"
        assert set(error) == {"message", "type", "param", "code"}


# --- failing fast ------------------------------------------------------------------------------


def test_a_budget_that_frees_after_the_deadline_is_a_429_at_once(
    upstream: Service, redis_url: str, redis_prefix: str
) -> None:
    with gateway(upstream, RPM_LIMIT="1", **on_redis(redis_url, redis_prefix)) as gw:
        sent = upstream.status()["totals"]["requests"]
        assert chat(gw).status_code == 200
        answer = timed(gw, 10_000)
        truth_s = gw.status()["limits"]["rpm"]["reset_s"]  # when the one request leaves the window
        assert answer.status_code == 429
        error = answer.json()["error"]
        assert error["type"] == "requests"
        assert error["code"] == "rate_limit_exceeded"
        assert "requests per min (RPM)" in error["message"]
        wait_ms = int(answer.headers["retry-after-ms"])
        assert abs(wait_ms / 1000 - truth_s) < 1.0
        assert int(answer.headers["retry-after"]) == -(-wait_ms // 1000)
        assert "x-should-retry" not in answer.headers, "it will fit: the SDK may retry"
        assert answer.headers["x-apim-expected-wait-ms"] == str(wait_ms)
        assert gw.status()["queue"]["depth"] == 0
        assert upstream.status()["totals"]["requests"] - sent == 1, "never sent"
        # The same request with the operator's 300 s deadline can fit: it queues instead.
        queued = Background(lambda: chat(gw))
        wait_for(lambda: gw.status()["queue"]["depth"] == 1, what="the request to queue")
        assert gw.status()["limits"]["rpm"]["used"] == 1
    assert queued.join().status_code == 503, "answered at shutdown, never dropped"


def test_small_requests_behind_an_unfittable_one_are_served(upstream: Service) -> None:
    with gateway(upstream, TPM_LIMIT="1000", MAX_CONCURRENCY="4") as gw:
        assert chat(gw, max_tokens=900).status_code == 200  # ~915 of the minute's 1,000 tokens
        big = Background(lambda: timed(gw, 10_000, max_tokens=500))
        small = [Background(lambda: timed(gw, 10_000, max_tokens=16)) for _ in range(2)]
        assert [s.join().status_code for s in small] == [200, 200]
        refused = big.join()
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "tokens"
        assert "tokens per min (TPM)" in refused.json()["error"]["message"]
        assert int(refused.headers["retry-after-ms"]) > 10_000


def test_a_spent_daily_budget_says_midnight_and_the_sdk_sees_it_within_its_deadline(
    upstream: Service, redis_url: str, redis_prefix: str
) -> None:
    zone = "Asia/Seoul"
    with gateway(upstream, RPD_LIMIT="1", DAILY_RESET_TZ=zone, **on_redis(redis_url, redis_prefix)) as gw:
        assert chat(gw).status_code == 200
        sdk = openai.OpenAI(base_url=gw.v1, api_key="sk-caller")  # the default 2 retries
        before = metric(gw, "apim_requests_total", status="429")
        started = time.monotonic()
        with pytest.raises(openai.RateLimitError) as caught:
            sdk.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=16, extra_headers={"x-apim-timeout-ms": "10000"}
            )
        elapsed = time.monotonic() - started
        now = datetime.now(ZoneInfo(zone))
        midnight = datetime(now.year, now.month, now.day, tzinfo=ZoneInfo(zone)) + timedelta(days=1)
        truth_ms = (midnight - now).total_seconds() * 1000
        response = caught.value.response
        assert abs(int(response.headers["retry-after-ms"]) - truth_ms) < 1000 + elapsed * 1000
        assert response.json()["error"]["type"] == "requests"
        assert "requests per day (RPD)" in caught.value.message
        # Hours away: the SDK does not wait that long (newer SDKs do not retry past 120 s, older
        # ones ignore a retry-after past 60 s and back off briefly, twice); every attempt is
        # answered at once, so the caller sees its error well within its deadline.
        assert 1 <= metric(gw, "apim_requests_total", status="429") - before <= 3
        assert elapsed < 10


def test_the_sdk_does_not_retry_a_queue_timeout(upstream: Service) -> None:
    with gateway(upstream, MAX_CONCURRENCY="1") as gw:
        slow = Background(lambda: chat(gw, headers={"x-mock-fault": "slow"}))
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 1, what="the slow request in flight")
        sdk = openai.OpenAI(base_url=gw.v1, api_key="sk-caller")  # the default 2 retries
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(
                model=MODEL, messages=MESSAGES, max_tokens=16, extra_headers={"x-apim-timeout-ms": "1000"}
            )
        assert caught.value.status_code == 504
        assert metric(gw, "apim_requests_total", status="504") == 1, "one wait, not three"
        assert slow.join().status_code == 200


def test_expected_wait_is_said_on_a_queued_answer_and_its_error_is_metered(upstream: Service) -> None:
    # 60 per minute paced over 1 s sub-windows: the second request waits about 1.5 s.
    with gateway(upstream, RPM_LIMIT="60", SHORT_WINDOW_S="1") as gw:
        first = chat(gw)
        assert first.status_code == 200
        assert first.headers["x-apim-expected-wait-ms"] == "0"
        second = chat(gw)
        assert second.status_code == 200
        assert 0 < int(second.headers["x-apim-expected-wait-ms"]) <= 1500
        counted = sum(
            metric(gw, "apim_queue_wait_prediction_error_seconds_count", direction=d)
            for d in ("late", "early")
        )
        assert counted >= 1


# --- priorities --------------------------------------------------------------------------------


def test_a_full_low_class_does_not_refuse_high(upstream: Service) -> None:
    # One slot, held by a slow answer: everything else queues. Low may fill half of the 10.
    with gateway(upstream, MAX_CONCURRENCY="1", MAX_QUEUE="10") as gw:
        slow = Background(lambda: chat(gw, headers={"x-mock-fault": "slow"}))
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 1, what="the slow request in flight")
        low = [Background(lambda: chat(gw, headers={"x-apim-priority": "low"})) for _ in range(5)]
        wait_for(lambda: gw.status()["queue"]["depth"] == 5, what="five low requests queued")
        refused = chat(gw, headers={"x-apim-priority": "low"})
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        high = openai.OpenAI(
            base_url=gw.v1, api_key="sk-caller", max_retries=0, default_headers={"x-apim-priority": "high"}
        )
        answer = high.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=16)
        assert answer.http_response.status_code == 200
        assert [c.join().status_code for c in low] == [200] * 5
        assert slow.join().status_code == 200


def test_queue_classes_have_their_own_room() -> None:
    async def scenario() -> None:
        queue = TicketQueue(10, (100, 80, 50))
        for _ in range(5):
            queue.push(Ticket(Priority.LOW, Cost(1, 0)))
        with pytest.raises(QueueFull):
            queue.push(Ticket(Priority.LOW, Cost(1, 0)))
        for _ in range(3):
            queue.push(Ticket(Priority.NORMAL, Cost(1, 0)))
        with pytest.raises(QueueFull):
            queue.push(Ticket(Priority.NORMAL, Cost(1, 0)))
        queue.push(Ticket(Priority.HIGH, Cost(1, 0)))
        queue.push(Ticket(Priority.HIGH, Cost(1, 0)))
        with pytest.raises(QueueFull):
            queue.push(Ticket(Priority.HIGH, Cost(1, 0)))
        assert queue.ahead(Priority.NORMAL) == (5, 0)
        assert queue.ahead(Priority.LOW) == (10, 0)

    asyncio.run(scenario())


def test_aging_lets_a_long_waiting_low_request_through_only_when_on() -> None:
    async def scenario(aging_s: float) -> Priority:
        queue = TicketQueue(10, aging_s=aging_s)
        old_low = Ticket(Priority.LOW, Cost(1, 0))
        old_low.arrived -= 25  # waited 25 s: past two aging steps of 10 s
        queue.push(old_low)
        queue.push(Ticket(Priority.HIGH, Cost(1, 0)))
        head = queue.head()
        assert head is not None
        assert queue.first(2)[0] is head
        return head.priority

    assert asyncio.run(scenario(0)) is Priority.HIGH, "off: strict priority"
    assert asyncio.run(scenario(10)) is Priority.LOW, "on: low has risen to high and is older"
    assert asyncio.run(scenario(20)) is Priority.HIGH, "one step only: normal, still behind high"


# --- the dispatcher and the prediction -----------------------------------------------------------


async def test_an_unfittable_head_is_answered_and_the_requests_behind_it_admitted(running) -> None:  # noqa: F811
    member = budget(Limits(tpm=100))
    d = start(Dispatcher([member], TicketQueue(100)), running)
    fill = Ticket(Priority.NORMAL, Cost(1, 90))
    d.submit(fill)
    assert await granted(fill)
    big = Ticket(Priority.NORMAL, Cost(1, 50))
    big.deadline = time.monotonic() + 5  # the 90 leave in 60 s: too late
    smalls = [Ticket(Priority.NORMAL, Cost(1, 5)) for _ in range(2)]
    for t in (big, *smalls):
        d.submit(t)
    for t in smalls:
        assert await granted(t)
    assert big.future is not None and big.future.done()
    refused = big.future.exception()
    assert isinstance(refused, Unfittable)
    assert refused.prediction.binding is not None and refused.prediction.binding.name == "tokens/minute"
    assert 55_000 < refused.prediction.wait_ms <= 60_000
    assert d.queue.depth == 0


async def test_a_prediction_counts_the_queue_ahead() -> None:
    member = budget(Limits(rpm=3))
    d = Dispatcher([member], TicketQueue(100))  # not started: tickets stay queued
    pool = Pool("m", [member], d)
    assert (await predict(pool, Ticket(Priority.NORMAL, Cost(1, 0)))).wait_ms == 0
    await member.acquire(Cost(1, 0))
    ahead = [Ticket(Priority.NORMAL, Cost(1, 0)) for _ in range(2)]
    for t in ahead:
        d.submit(t)
    # One admitted and two ahead fill the 3: a third waits for the first to leave the window.
    third = await predict(pool, Ticket(Priority.NORMAL, Cost(1, 0)))
    assert 59_000 < third.wait_ms <= 60_000
    assert third.binding is not None and third.binding.name == "requests/minute"
    # Queued high requests are not ahead of nothing: a high one has only the high class ahead.
    assert (await predict(pool, Ticket(Priority.HIGH, Cost(1, 0)))).wait_ms == 0
    # Five ahead of a limit of 3 drain over two windows.
    for _ in range(3):
        d.submit(Ticket(Priority.NORMAL, Cost(1, 0)))
    far = await predict(pool, Ticket(Priority.NORMAL, Cost(1, 0)))
    assert 119_000 < far.wait_ms <= 120_000
    d.close()


async def test_with_aging_the_dispatcher_admits_a_long_waiting_low_request_first(running) -> None:  # noqa: F811
    order: list[Priority] = []
    queue = TicketQueue(100, aging_s=10)
    d = Dispatcher([budget(Limits())], queue, on_admit=lambda t, _b, _d: order.append(t.priority))
    low, high = Ticket(Priority.LOW, Cost(1, 0)), Ticket(Priority.HIGH, Cost(1, 0))
    low.arrived -= 25  # two aging steps: it ranks as high, and is older
    d.submit(high)
    d.submit(low)
    start(d, running)
    assert await granted(low) and await granted(high)
    assert order == [Priority.LOW, Priority.HIGH]
