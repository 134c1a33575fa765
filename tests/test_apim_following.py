"""The gateway follows the upstream's own figures, end to end: real mock and gateway processes,
real Redis where instances share, the official SDK as client.

The mock's limit is lowered at run time (``POST /admin/limits``): from the first answer that
reports it, the gateway admits only what fits the lower limit and meets no upstream 429; when the
limit is restored, the next answer brings the budget back. Someone else spending the mock's key,
Azure's header set (no limit header), capacity 429s and malformed figures are covered too.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

import httpx
import openai
import pytest

from tests.processes import Service, running
from tests.test_apim_e2e import (
    MESSAGES,
    MODEL,
    Background,
    gateway,
    gateway_env,
    metric,
    mock,
    on_redis,
    wait_for,
)

TPM = 6000
LOWER = 3000
MAX_TOKENS = 100


def lower(upstream: Service, **limits: int) -> None:
    httpx.post(f"{upstream.url}/admin/limits", json=limits, timeout=5).raise_for_status()


def restore(upstream: Service) -> None:
    httpx.post(f"{upstream.url}/admin/limits", json={"restore": True}, timeout=5).raise_for_status()


def sdk(gw: Service, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.v1, api_key="sk-caller", max_retries=0, **kwargs)


def ask(gw: Service, max_tokens: int = MAX_TOKENS, deadline_ms: int | None = None) -> int:
    """One request through the gateway with the SDK: its status (the gateway's own 429 included)."""
    headers = {} if deadline_ms is None else {"x-apim-timeout-ms": str(deadline_ms)}
    try:
        sdk(gw).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=max_tokens, extra_headers=headers
        )
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def burst(gw: Service, count: int, deadline_ms: int = 2000) -> list[int]:
    """``count`` requests at once, each told to give up fast rather than wait for the window."""
    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda _: ask(gw, deadline_ms=deadline_ms), range(count)))


def following(gw: Service) -> dict | None:
    return gw.status()["budgets"][0]["following"]


def tpm(service: Service) -> dict:
    return service.status()["limits"]["tpm"]


@contextmanager
def logged_gateway(upstream: Service | str, log: Path, **settings: str) -> Iterator[Service]:
    url = upstream.v1 if isinstance(upstream, Service) else upstream
    with running("apim_server", env=gateway_env(url, **settings), output=log) as gw:
        yield gw


def test_a_lowered_limit_is_followed_from_the_first_answer_that_reports_it(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    with mock(TPM_LIMIT=str(TPM)) as upstream, logged_gateway(upstream, log, TPM_LIMIT=str(TPM)) as gw:
        assert burst(gw, 10) == [200] * 10
        lower(upstream, tpm=LOWER)
        assert ask(gw) == 200  # the first answer that reports the lower limit
        now = following(gw)
        assert now is not None
        assert now["limits"]["tpm"] | {"since": None} == {
            "configured": TPM,
            "effective": LOWER,
            "reason": "limit",
            "since": None,
            "model": MODEL,
        }
        assert tpm(gw)["limit"] == LOWER
        # Twice what is left: what fits the lower limit is admitted, the rest is refused at once
        # by the gateway (each request allows 2 s); the upstream refuses nothing.
        used = tpm(gw)["used"]
        fits = (LOWER - used) // (used // 11)  # eleven requests of one cost so far
        answers = burst(gw, 2 * fits)
        assert answers.count(200) == fits
        assert set(answers) == {200, 429}
        assert upstream.status()["totals"]["rate_limited"] == 0
        assert gw.status()["totals"]["upstream_429"] == 0
        # Both records agree: the budget follows the upstream's figure, not the configured one.
        assert tpm(gw)["used"] == tpm(upstream)["used"] <= LOWER
        assert (
            metric(gw, "apim_budget_limit", deployment="default", limit="tpm", model="*", source="effective")
            == LOWER
        )
        assert (
            metric(gw, "apim_budget_limit", deployment="default", limit="tpm", model="*", source="configured")
            == TPM
        )
        assert metric(gw, "apim_budget_following", deployment="default", model="*") == 1
    lines = [line for line in log.read_text().splitlines() if "apim.following" in line]
    assert len(lines) == 1, lines
    assert "tpm 3000 (configured 6000), the upstream's x-ratelimit-limit-tokens" in lines[0]


def test_a_restored_limit_brings_the_budget_back_with_the_next_answer(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    with mock(TPM_LIMIT=str(TPM)) as upstream, logged_gateway(upstream, log, TPM_LIMIT=str(TPM)) as gw:
        lower(upstream, tpm=LOWER)
        assert ask(gw) == 200
        assert following(gw) is not None
        # Too big for the lower limit (refused at once, never sent), not for the configured one.
        big = LOWER
        assert ask(gw, max_tokens=big, deadline_ms=1000) == 429
        sent = upstream.status()["totals"]["requests"]
        restore(upstream)
        assert ask(gw) == 200  # its answer reports the configured limit again
        assert following(gw) is None
        assert tpm(gw)["limit"] == TPM
        assert ask(gw, max_tokens=big, deadline_ms=1000) == 200
        assert upstream.status()["totals"]["requests"] == sent + 2
        assert upstream.status()["totals"]["rate_limited"] == 0
        assert metric(gw, "apim_budget_following", deployment="default", model="*") == 0
        assert metric(gw, "apim_budget_following_episodes_total", deployment="default", model="*") == 1
    lines = [line for line in log.read_text().splitlines() if "apim.following" in line]
    assert len(lines) == 2, lines
    assert "is back to its configured limits" in lines[1]


def test_two_instances_on_one_redis_follow_together(redis_url: str, redis_prefix: str) -> None:
    shared = {"TPM_LIMIT": str(TPM), **on_redis(redis_url, redis_prefix)}
    with (
        mock(TPM_LIMIT=str(TPM)) as upstream,
        gateway(upstream, **shared) as first,
        gateway(upstream, **shared) as second,
    ):
        lower(upstream, tpm=LOWER)
        assert ask(first) == 200
        assert following(first) is not None
        # The second instance has sent nothing: it takes the level from the shared record.
        wait_for(lambda: following(second) is not None, what="the second instance to follow")
        assert tpm(second)["limit"] == LOWER
        sent = upstream.status()["totals"]["requests"]
        assert ask(second, max_tokens=LOWER, deadline_ms=1000) == 429
        assert upstream.status()["totals"]["requests"] == sent, "refused at the gateway, never sent"
        restore(upstream)
        assert ask(second) == 200
        assert following(second) is None
        wait_for(lambda: following(first) is None, what="the first instance to come back")
        assert tpm(first)["limit"] == TPM
        assert upstream.status()["totals"]["rate_limited"] == 0


def test_a_waiting_request_goes_as_soon_as_another_instance_sees_the_limit_back(
    redis_url: str, redis_prefix: str
) -> None:
    shared = {"TPM_LIMIT": str(TPM), **on_redis(redis_url, redis_prefix)}
    with (
        mock(TPM_LIMIT=str(TPM)) as upstream,
        gateway(upstream, **shared) as first,
        gateway(upstream, **shared) as second,
    ):
        lower(upstream, tpm=LOWER)
        assert ask(first) == 200
        wait_for(lambda: following(second) is not None, what="the second instance to follow")
        # Fits the lower limit only once the first request leaves the window: it waits at the
        # head of the second's queue (a minute, says the lower limit).
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": LOWER - 100}
        waiting = Background(lambda: httpx.post(f"{second.v1}/chat/completions", json=body, timeout=60))
        wait_for(lambda: second.status()["queue"]["depth"] == 1, what="the request to queue")
        restore(upstream)
        assert ask(first) == 200  # the first instance hears it; the second takes it from the record
        answer = waiting.join(60)
        assert answer.status_code == 200
        # Admitted on the news, not after the wait the lower limit had predicted for it.
        assert int(answer.headers["x-apim-queue-ms"]) < int(answer.headers["x-apim-expected-wait-ms"]) / 2
        assert upstream.status()["totals"]["rate_limited"] == 0


def test_someone_else_spending_the_key_is_followed(redis_url: str, redis_prefix: str) -> None:
    with (
        mock(TPM_LIMIT=str(TPM)) as upstream,
        gateway(upstream, TPM_LIMIT=str(TPM), **on_redis(redis_url, redis_prefix)) as gw,
    ):
        assert ask(gw) == 200
        # Another client of the same key spends half of it, straight at the upstream.
        direct = openai.OpenAI(base_url=upstream.v1, api_key="sk-other", max_retries=0)
        direct.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=LOWER - 20)
        assert ask(gw) == 200  # its answer says how little is left
        wait_for(lambda: following(gw) is not None, what="the budget to follow")
        room = following(gw)["limits"]["tpm"]
        assert room["reason"] == "room"
        # What the upstream counts and we do not is someone else's: the budget is what remains.
        assert room["effective"] == TPM - (tpm(upstream)["used"] - tpm(gw)["used"])
        answers = burst(gw, 30)
        assert 200 in answers and 429 in answers
        assert upstream.status()["totals"]["rate_limited"] == 0
        assert gw.status()["totals"]["upstream_429"] == 0
        assert metric(gw, "apim_budget_gap", deployment="default", limit="tpm", model="*") >= 0


def test_azure_figures_without_a_limit_header_are_followed_too() -> None:
    settings = {"FLAVOR": "azure", "TPM_LIMIT": str(TPM)}
    with (
        mock(**settings) as upstream,
        gateway(f"{upstream.url}/openai/v1", TPM_LIMIT=str(TPM), RPM_LIMIT="0") as gw,
    ):
        reply = sdk(gw).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=5
        )
        assert "x-ratelimit-limit-tokens" not in reply.headers  # Azure sends only what remains
        lower(upstream, tpm=LOWER)
        assert ask(gw) == 200
        now = following(gw)
        assert now is not None and now["limits"]["tpm"]["reason"] == "room"
        assert now["limits"]["tpm"]["effective"] == LOWER
        assert ask(gw, max_tokens=LOWER, deadline_ms=1000) == 429
        assert upstream.status()["totals"]["rate_limited"] == 0


@pytest.mark.parametrize("flavor", ["openai", "azure"])
def test_capacity_429s_are_waited_out_and_lower_nothing(flavor: str) -> None:
    faults = {"FAULT_CAPACITY_RATE": "0.3", "FAULT_CAPACITY_RETRY_MS": "20", "SEED": "5"}
    with mock(FLAVOR=flavor, TPM_LIMIT="100000", **faults) as upstream:
        url = upstream.v1 if flavor == "openai" else f"{upstream.url}/openai/v1"
        with gateway(url, TPM_LIMIT="100000") as gw:
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: ask(gw, max_tokens=5), range(24)))
            assert answers == [200] * 24
            assert upstream.status()["totals"]["capacity_rejected"] >= 3
            assert gw.status()["totals"]["upstream_429"] == upstream.status()["totals"]["capacity_rejected"]
            assert following(gw) is None
            assert tpm(gw)["limit"] == 100000
            assert metric(gw, "apim_upstream_capacity_429_total", deployment="default") >= 3


def test_malformed_or_absurd_figures_change_nothing() -> None:
    bad = [
        {"x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1"},  # seen from Azure
        {"x-ratelimit-limit-tokens": "0", "x-ratelimit-remaining-tokens": "0"},
        {"x-ratelimit-limit-tokens": "lots", "x-ratelimit-remaining-requests": "1e3"},
        {"x-ratelimit-limit-tokens": "100", "x-ratelimit-remaining-tokens": "500"},  # contradicts itself
        {"x-ratelimit-limit-tokens": "99999999999999999999", "x-ratelimit-remaining-tokens": "3.5"},
        {"x-ratelimit-limit-tokens": "2000", "x-ratelimit-remaining-tokens": "-5"},  # one bad, both out
    ]
    with (
        running("tests.echo_upstream") as upstream,
        gateway(upstream, TPM_LIMIT=str(TPM), RPM_LIMIT="60") as gw,
    ):
        for headers in bad:
            reply = httpx.post(
                f"{gw.v1}/chat/completions",
                json={
                    "model": MODEL,
                    "messages": MESSAGES,
                    "max_tokens": 5,
                    "user": "echo-headers:" + urlencode(headers),
                },
                timeout=10,
            )
            assert reply.status_code == 200
            assert reply.headers["x-ratelimit-limit-tokens"] == headers["x-ratelimit-limit-tokens"]
        assert following(gw) is None
        limits = gw.status()["limits"]
        assert (limits["tpm"]["limit"], limits["rpm"]["limit"]) == (TPM, 60)
        assert gw.status()["paused_s"] == 0
        # A well-formed lower figure from the same upstream is followed: the test can fail.
        good = {"x-ratelimit-limit-tokens": "2000", "x-ratelimit-remaining-tokens": "1900"}
        httpx.post(
            f"{gw.v1}/chat/completions",
            json={
                "model": MODEL,
                "messages": MESSAGES,
                "max_tokens": 5,
                "user": "echo-headers:" + urlencode(good),
            },
            timeout=10,
        ).raise_for_status()
        assert gw.status()["limits"]["tpm"]["limit"] == 2000
