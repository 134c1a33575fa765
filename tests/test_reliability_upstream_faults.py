"""Upstream faults from the mock (500, 503, slow, dropped connections, 429) through the gateway:
bounded retries, clear errors, every admission accounted for, nothing left in the queue or in
flight afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from tests.processes import Service
from tests.test_apim_e2e import MESSAGES, MODEL, Background, chat, gateway, mock, on_redis, wait_for

RETRIES = 2


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code


def settled(gw: Service) -> dict:
    """The gateway's status once nothing is queued or in flight (a stuck entry fails here)."""
    wait_for(
        lambda: (s := gw.status()["queue"])["depth"] == 0 and s["in_flight"] == 0,
        what="an empty queue and no request in flight",
    )
    return gw.status()


def admitted_everywhere(gw: Service, upstream: Service) -> None:
    """Every admission the gateway charged reached the upstream, which counted it too."""
    ours = settled(gw)["limits"]["rpm"]["used"]
    theirs = upstream.status()["limits"]["rpm"]["used"]
    assert ours == theirs


@pytest.fixture(scope="module")
def upstream() -> Iterator[Service]:
    with mock(RPM_LIMIT="100000", FAULT_SLOW_MS="3000") as service:
        yield service


@pytest.fixture
def gw(upstream: Service, redis_url: str, redis_prefix: str) -> Iterator[Service]:
    httpx.post(f"{upstream.url}/admin/reset").raise_for_status()
    with gateway(
        upstream,
        RPM_LIMIT="100000",
        UPSTREAM_RETRIES=str(RETRIES),
        UPSTREAM_TIMEOUT_S="1",
        MAX_CONCURRENCY="2",
        **on_redis(redis_url, redis_prefix),
    ) as service:
        yield service


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 500, "internal_error"), ("503", 503, None), ("drop", 502, "upstream_unreachable")],
)
def test_failing_upstream_is_retried_a_bounded_number_of_times(
    fault: str, status: int, code: str | None, gw: Service, upstream: Service
) -> None:
    before = upstream.status()["totals"]["requests"]
    response = chat(gw, headers={"x-mock-fault": fault})
    assert_openai_error(response, status, code)
    assert upstream.status()["totals"]["requests"] - before == 1 + RETRIES
    admitted_everywhere(gw, upstream)


def test_slow_upstream_is_a_504_and_not_resent(gw: Service, upstream: Service) -> None:
    # The upstream may still be working on a request that timed out: resending could charge twice.
    before = upstream.status()["totals"]["requests"]
    response = chat(gw, headers={"x-mock-fault": "slow"})
    assert_openai_error(response, 504, "upstream_timeout")
    assert upstream.status()["totals"]["requests"] - before == 1
    admitted_everywhere(gw, upstream)


def test_slow_stream_ends_and_frees_its_slot(gw: Service, upstream: Service) -> None:
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream(
        "POST", f"{gw.v1}/chat/completions", json=payload, headers={"x-mock-fault": "slow"}, timeout=30
    ) as response:
        try:
            text = b"".join(response.iter_raw()).decode()
        except httpx.HTTPError:
            text = ""
    assert "[DONE]" not in text, "a stream cut by the upstream's silence is not passed off as complete"
    admitted_everywhere(gw, upstream)


def test_a_drop_on_a_kept_alive_connection_is_not_resent_uncharged(gw: Service, upstream: Service) -> None:
    assert chat(gw).status_code == 200  # leaves a kept-alive connection in the pool
    before = upstream.status()["totals"]["requests"]
    assert chat(gw, headers={"x-mock-fault": "drop"}).status_code == 502
    assert upstream.status()["totals"]["requests"] - before == 1 + RETRIES
    admitted_everywhere(gw, upstream)


def test_faults_leave_no_slot_taken(gw: Service, upstream: Service) -> None:
    """Two concurrency slots: after a run of faults, two slow requests still run side by side."""
    for fault in ("500", "503", "slow"):
        assert chat(gw, headers={"x-mock-fault": fault}).status_code >= 500
    settled(gw)
    calls = [Background(lambda: chat(gw, headers={"x-mock-fault": "slow"})) for _ in range(2)]
    wait_for(lambda: gw.status()["queue"]["in_flight"] == 2, what="both slots in use at once")
    assert [c.join().status_code for c in calls] == [504, 504]
    assert chat(gw).status_code == 200
    admitted_everywhere(gw, upstream)


def test_upstream_429_forever_ends_in_a_clear_answer_and_an_empty_queue(
    upstream: Service, redis_url: str, redis_prefix: str
) -> None:
    with gateway(upstream, QUEUE_TIMEOUT_S="2", **on_redis(redis_url, redis_prefix)) as gw:
        response = chat(gw, headers={"x-mock-fault": "429"})
        assert_openai_error(response, 504, "queue_timeout")
        status = settled(gw)
        assert status["totals"]["upstream_429"] >= 2, "requeued and tried again"
        assert status["totals"]["rate_limited"] == 0
        assert chat(gw).status_code == 200


def test_random_faults_under_concurrency_lose_nothing(redis_url: str, redis_prefix: str) -> None:
    """A quarter of attempts fail one way or another; every caller gets an answer, the two sides'
    counts agree, and the queue drains."""
    with (
        mock(
            RPM_LIMIT="100000",
            FAULT_500_RATE="0.08",
            FAULT_503_RATE="0.08",
            FAULT_DROP_RATE="0.08",
            FAULT_SLOW_RATE="0.04",
            FAULT_SLOW_MS="200",
            SEED="11",
        ) as flaky,
        gateway(
            flaky,
            RPM_LIMIT="100000",
            UPSTREAM_RETRIES="4",
            MAX_CONCURRENCY="4",
            **on_redis(redis_url, redis_prefix),
        ) as gw,
    ):
        n = 40
        calls = [Background(lambda i=i: chat(gw, stream=i % 3 == 0)) for i in range(n)]
        answers = [c.join(60) for c in calls]
        statuses = [a.status_code for a in answers]
        assert len(statuses) == n
        for answer in answers:
            if answer.status_code == 200:
                if answer.headers["content-type"].startswith("text/event-stream"):
                    assert answer.text.rstrip().endswith("data: [DONE]")
                else:
                    assert json.loads(answer.text)["choices"]
            else:
                assert answer.status_code in (500, 502, 503), answer.text[:200]
                assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        assert statuses.count(200) >= n * 0.9, statuses
        assert flaky.status()["totals"]["errors"] >= 1, "faults did happen"
        status = settled(gw)
        assert status["totals"]["requests"] == n
        assert status["limits"]["rpm"]["used"] == flaky.status()["limits"]["rpm"]["used"]
