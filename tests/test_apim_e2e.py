"""The gateway end to end: real mock and gateway processes, the official openai SDK as client.

Each test names the limits it needs; helpers here are shared by the other test_apim_* files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest

from tests.processes import Service, Spec, free_port, running, running_all

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello through the gateway."}]
UNLIMITED = {"RPM_LIMIT": "0", "TPM_LIMIT": "0", "RPD_LIMIT": "0", "TPD_LIMIT": "0"}


def mock_env(**settings: str) -> dict[str, str]:
    env = {f"MOCK_{k}": v for k, v in UNLIMITED.items()}
    env |= {"MOCK_ADMIN": "true", "MOCK_LOG_REQUESTS": "false", "MOCK_REDIS_URL": ""}
    env |= {f"MOCK_{k}": v for k, v in settings.items()}
    return env


def gateway_env(upstream: str, **settings: str) -> dict[str, str]:
    env = {f"APIM_{k}": v for k, v in UNLIMITED.items()}
    env |= {"APIM_UPSTREAM_URL": upstream, "APIM_REDIS_URL": "", "APIM_LOG_REQUESTS": "false"}
    # The fault tests steer the mock through the gateway; off by default (see test_apim_forwarded_headers).
    env["APIM_FORWARD_MOCK_FAULTS"] = "true"
    env |= {f"APIM_{k}": v for k, v in settings.items()}
    return env


@contextmanager
def mock(**settings: str) -> Iterator[Service]:
    with running("llm_mock_server", env=mock_env(**settings)) as service:
        yield service


@contextmanager
def gateway(upstream: Service | str, **settings: str) -> Iterator[Service]:
    url = upstream.v1 if isinstance(upstream, Service) else upstream
    with running("apim_server", env=gateway_env(url, **settings)) as service:
        yield service


def mock_spec(**settings: str) -> Spec:
    """A mock to start with ``running_all``, on a port chosen now so that a gateway started
    beside it can be given its URL (``v1(spec)``)."""
    return Spec("llm_mock_server", mock_env(**settings), port=free_port())


def gateway_spec(upstream: Spec | str, **settings: str) -> Spec:
    url = v1(upstream) if isinstance(upstream, Spec) else upstream
    return Spec("apim_server", gateway_env(url, **settings))


def v1(spec: Spec) -> str:
    return f"http://127.0.0.1:{spec.port}/v1"


@contextmanager
def mock_and_gateway(mock_settings: dict[str, str], **settings: str) -> Iterator[tuple[Service, Service]]:
    """A mock with ``mock_settings`` and a gateway in front of it, started side by side."""
    upstream = mock_spec(**mock_settings)
    with running_all(upstream, gateway_spec(upstream, **settings)) as (mock_service, gateway_service):
        yield mock_service, gateway_service


def on_redis(redis_url: str, prefix: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "REDIS_PREFIX": prefix}


def client(service: Service, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.v1, api_key="sk-caller", max_retries=0, **kwargs)


def chat(service: Service, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, **body}
    return httpx.post(f"{service.v1}/chat/completions", json=payload, headers=headers, timeout=30)


def wait_for(check: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def metric(service: Service, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 if absent)."""
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


class Background:
    """A call run on a thread, so a test can act while it waits in the gateway's queue."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.done_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        self.done_at = time.monotonic()

    def join(self, timeout: float = 30) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background call did not finish"
        if self.error is not None:
            raise self.error
        return self.result


# --- one mock and one gateway for the plain behaviours -------------------------------------


@pytest.fixture(scope="module")
def mock_and_gw(redis_url: str) -> Iterator[tuple[Service, Service]]:
    prefix = f"test-apim-{uuid.uuid4().hex[:12]}"
    with mock_and_gateway(
        {"TPM_LIMIT": "1000000", "RPM_LIMIT": "100000", "API_KEYS": "sk-caller,sk-other"},
        TPM_LIMIT="1000000",
        RPM_LIMIT="100000",
        MAX_BODY_BYTES="100000",
        **on_redis(redis_url, prefix),
    ) as both:
        yield both


@pytest.fixture(scope="module")
def upstream(mock_and_gw: tuple[Service, Service]) -> Service:
    return mock_and_gw[0]


@pytest.fixture(scope="module")
def gw(mock_and_gw: tuple[Service, Service]) -> Service:
    return mock_and_gw[1]


def test_plain_completion_through_the_gateway(gw: Service) -> None:
    raw = client(gw).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=16, extra_headers={"x-request-id": "req_from_caller"}
    )
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert raw.headers["x-request-id"] == "req_from_caller"
    assert int(raw.headers["x-apim-queue-ms"]) >= 0
    # The upstream's own rate-limit view is passed through, with its request id alongside ours.
    assert raw.headers["x-ratelimit-limit-requests"] == "100000"
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000000"
    assert raw.headers["x-upstream-request-id"].startswith("req_")


def test_request_id_is_generated_when_the_caller_sends_none(gw: Service) -> None:
    response = chat(gw, headers={"authorization": "Bearer sk-caller"})
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert response.headers["x-request-id"] != response.headers["x-upstream-request-id"]


def test_stream_without_include_usage_has_no_usage_chunk(gw: Service) -> None:
    used_before = metric(gw, "apim_tokens_used_total")
    chunks = list(
        client(gw).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, stream=True)
    )
    assert chunks, "the stream passed through"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks), "no empty-choices usage chunk"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    # The gateway still learnt the usage (it asked upstream for it) and settled it.
    assert metric(gw, "apim_tokens_used_total") > used_before


def test_stream_bytes_end_with_done_and_no_usage(gw: Service) -> None:
    payload = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream(
        "POST", f"{gw.v1}/chat/completions", json=payload, headers={"authorization": "Bearer sk-caller"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "x-apim-queue-ms" in response.headers
        text = b"".join(response.iter_raw()).decode()
    frames = [f for f in text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    for frame in frames[:-1]:
        assert json.loads(frame.removeprefix("data: "))["usage"] is None


def test_stream_with_include_usage_keeps_the_usage_chunk(gw: Service) -> None:
    chunks = list(
        client(gw).chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_models_pass_through(gw: Service) -> None:
    ids = [m.id for m in client(gw).models.list()]
    assert MODEL in ids


def test_bad_input_is_400_in_openai_shape(gw: Service) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(gw).chat.completions.create(model=MODEL, messages=[])
    assert caught.value.status_code == 400
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == "messages"
    assert caught.value.response.headers["x-apim-queue-ms"] == "0"

    broken = httpx.post(
        f"{gw.v1}/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"

    text = httpx.post(
        f"{gw.v1}/chat/completions",
        content=json.dumps({"model": MODEL, "messages": MESSAGES}).encode(),
        headers={"content-type": "text/plain", "authorization": "Bearer sk-caller"},
    )
    assert text.status_code == 400
    assert "Content-Type" in text.json()["error"]["message"]

    deep = b'{"model":"gpt-4o-mini","messages":[],"extra":' + b"[" * 5000 + b"]" * 5000 + b"}"
    nested = httpx.post(
        f"{gw.v1}/chat/completions", content=deep, headers={"content-type": "application/json"}
    )
    assert nested.status_code == 400
    assert nested.json()["error"]["type"] == "invalid_request_error"

    bad_priority = chat(gw, headers={"x-apim-priority": "urgent", "authorization": "Bearer sk-caller"})
    assert bad_priority.status_code == 400
    assert bad_priority.json()["error"]["param"] == "x-apim-priority"


def test_oversized_body_is_413(gw: Service) -> None:
    response = chat(gw, messages=[{"role": "user", "content": "x" * 200_000}])
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"


def test_request_too_large_is_refused_at_once_and_never_forwarded(gw: Service, upstream: Service) -> None:
    before = upstream.status()["totals"]["requests"]
    sdk = openai.OpenAI(base_url=gw.v1, api_key="sk-caller", max_retries=3)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2_000_000)
    message = caught.value.response.json()["error"]["message"]
    assert message.startswith(
        f"Request too large for {MODEL} on tokens per min (TPM): Limit 1000000, Requested "
    )
    requested = int(message.split("Requested ")[1].split(".")[0])
    assert requested > 2_000_000
    # Never queued, never sent, and the SDK was told not to retry.
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert upstream.status()["totals"]["requests"] == before
    assert gw.status()["queue"]["depth"] == 0


def test_upstream_4xx_passes_through_without_retry(gw: Service, upstream: Service) -> None:
    before = upstream.status()["totals"]["requests"]
    with pytest.raises(openai.NotFoundError) as missing:
        client(gw).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.response.json()["error"]["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        openai.OpenAI(base_url=gw.v1, api_key="sk-wrong", max_retries=0).chat.completions.create(
            model=MODEL, messages=MESSAGES
        )
    assert unauthorized.value.response.json()["error"]["code"] == "invalid_api_key"
    # One attempt each: the model request reached the mock once; the key check happens first.
    assert upstream.status()["totals"]["requests"] - before == 2


def test_gateway_key_replaces_the_callers(upstream: Service) -> None:
    with gateway(upstream, UPSTREAM_API_KEY="sk-other") as keyed:
        reply = openai.OpenAI(base_url=keyed.v1, api_key="anything", max_retries=0).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=4
        )
        assert reply.choices[0].message.content
        assert (
            httpx.get(f"{upstream.url}/status", params={"api_key": "sk-other"}).json()["limits"]["rpm"][
                "used"
            ]
            >= 1
        )


def test_status_metrics_health(gw: Service) -> None:
    chat(gw, headers={"authorization": "Bearer sk-caller"}).raise_for_status()
    status = gw.status()
    assert status["service"] == "apim"
    assert status["store"] == "redis"
    assert set(status["limits"]) >= {"rpm", "tpm"}
    assert status["limits"]["rpm"]["used"] >= 1
    assert status["limits"]["rpm"]["remaining"] == 100000 - status["limits"]["rpm"]["used"]
    assert status["totals"]["requests"] >= 1
    assert status["totals"]["upstream_429"] == 0
    assert set(status["queue"]) >= {"depth", "in_flight", "oldest_wait_s", "wait_p50_s", "wait_p99_s"}
    assert status["admitted_per_min"] >= 1
    assert status["cluster"]["instances"] >= 1

    text = httpx.get(f"{gw.url}/metrics").text
    for name in (
        "apim_requests_total",
        "apim_admissions_total",
        "apim_upstream_responses_total",
        "apim_tokens_charged_total",
        "apim_queue_wait_seconds_bucket",
        "apim_upstream_latency_seconds_bucket",
        "apim_queue_depth",
        "apim_in_flight",
        'apim_budget_remaining{limit="rpm"}',
    ):
        assert name in text, name
    assert metric(gw, "apim_requests_total", status="200") >= 1
    assert httpx.get(f"{gw.url}/healthz").status_code == 200
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "store": True, "upstream": True, "closing": False}


# --- queueing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_upstream() -> Iterator[Service]:
    with mock() as service:
        yield service


def test_queue_timeout_is_504_and_uses_no_budget(
    plain_upstream: Service, redis_url: str, redis_prefix: str
) -> None:
    # The budget has room, so the prediction is "at once"; the one slot is held by a slow answer,
    # so the prediction is wrong and the request times out in the queue.
    with gateway(
        plain_upstream,
        RPM_LIMIT="100",
        MAX_CONCURRENCY="1",
        QUEUE_TIMEOUT_S="1",
        **on_redis(redis_url, redis_prefix),
    ) as gw:
        sent_before = plain_upstream.status()["totals"]["requests"]
        assert chat(gw).status_code == 200
        slow = Background(lambda: chat(gw, headers={"x-mock-fault": "slow"}))
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 1, what="the slow request in flight")
        late = chat(gw)
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "queue_timeout"
        assert int(late.headers["retry-after"]) >= 1
        assert late.headers["x-apim-expected-wait-ms"] == "0"
        # The gateway waited on the caller's behalf: the SDK must not queue it again.
        assert late.headers["x-should-retry"] == "false"
        assert int(late.headers["x-apim-queue-ms"]) >= 1000
        assert slow.join().status_code == 200
        assert gw.status()["limits"]["rpm"]["used"] == 2
        assert plain_upstream.status()["totals"]["requests"] - sent_before == 2


def test_full_queue_is_429_with_retry_after(plain_upstream: Service) -> None:
    with gateway(plain_upstream, MAX_CONCURRENCY="1", MAX_QUEUE="1", QUEUE_TIMEOUT_S="3") as gw:
        slow = Background(lambda: chat(gw, headers={"x-mock-fault": "slow"}))
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 1, what="the slow request in flight")
        waiting = Background(lambda: chat(gw))
        wait_for(lambda: gw.status()["queue"]["depth"] == 1, what="one queued request")
        full = chat(gw)
        assert full.status_code == 429
        assert full.json()["error"]["code"] == "queue_full"
        assert int(full.headers["retry-after"]) >= 1
        assert waiting.join().status_code == 504
        assert slow.join().status_code == 200


def test_caller_that_hangs_up_while_queued_uses_no_budget(plain_upstream: Service) -> None:
    # RPM 60 paced over 1 s sub-windows: one request per ~1.5 s (with the margin).
    with gateway(plain_upstream, RPM_LIMIT="60", SHORT_WINDOW_S="1") as gw:
        assert chat(gw).status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{gw.v1}/chat/completions",
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 16},
                timeout=httpx.Timeout(30, read=0.3),
            )
        wait_for(lambda: gw.status()["queue"]["depth"] == 0, what="the abandoned request to leave")
        # Well past the moment it would have been admitted had it stayed in the queue.
        time.sleep(2.5)
        status = gw.status()
        assert status["limits"]["rpm"]["used"] == 1
        assert status["totals"]["admitted"] == 1
        assert metric(gw, "apim_requests_total", status="499") == 1


def test_priority_classes_are_served_in_order(plain_upstream: Service) -> None:
    # One admission per 1 s sub-window, lengthened by the margin to 3.5 s: time enough to
    # queue all three before the first of them is admitted, even on a busy machine.
    with gateway(plain_upstream, RPM_LIMIT="60", SHORT_WINDOW_S="1", WINDOW_MARGIN_MS="2500") as gw:
        assert chat(gw).status_code == 200
        calls = {}
        for depth, priority in enumerate(("low", "normal", "high"), start=1):
            calls[priority] = Background(lambda p=priority: chat(gw, headers={"x-apim-priority": p}))
            wait_for(lambda d=depth: gw.status()["queue"]["depth"] == d, what=f"{priority} queued")
        assert gw.status()["queue"]["by_priority"] == {"high": 1, "normal": 1, "low": 1}
        for call in calls.values():
            assert call.join().status_code == 200
        finished = sorted(calls, key=lambda p: calls[p].done_at)
        assert finished == ["high", "normal", "low"]


# --- upstream failures --------------------------------------------------------------------------


def test_upstream_429_is_absorbed_and_requeued() -> None:
    # The mock paces 60 RPM over 1 s sub-windows; this gateway is not told about any limit,
    # so the mock answers 429s that the gateway must absorb.
    with mock_and_gateway({"RPM_LIMIT": "60", "SHORT_WINDOW_S": "1"}) as (strict, gw):
        calls = [
            Background(lambda: client(gw).chat.completions.create(model=MODEL, messages=MESSAGES))
            for _ in range(4)
        ]
        replies = [c.join() for c in calls]
        assert all(r.choices[0].message.content for r in replies)
        assert strict.status()["totals"]["rate_limited"] >= 1, "the upstream did answer 429s"
        status = gw.status()
        assert status["totals"]["upstream_429"] == strict.status()["totals"]["rate_limited"]
        assert status["totals"]["rate_limited"] == 0, "no caller saw a 429"
        assert status["totals"]["requests"] == 4


def test_upstream_429_every_time_ends_in_queue_timeout(plain_upstream: Service) -> None:
    # x-mock-fault is forwarded (APIM_FORWARD_MOCK_FAULTS, set here), so every attempt is refused.
    with gateway(plain_upstream, QUEUE_TIMEOUT_S="2.5") as gw:
        before = plain_upstream.status()["totals"]["rate_limited"]
        response = chat(gw, headers={"x-mock-fault": "429"})
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "queue_timeout"
        # When it could be tried again: the upstream's own 429s said how long.
        assert int(response.headers["retry-after"]) >= 1
        assert int(response.headers["retry-after-ms"]) >= 1000
        assert plain_upstream.status()["totals"]["rate_limited"] - before >= 2, "requeued and tried again"


def test_upstream_500_is_retried_then_passed_on(plain_upstream: Service) -> None:
    with gateway(plain_upstream, UPSTREAM_RETRIES="2", RPM_LIMIT="1000") as gw:
        before = plain_upstream.status()["totals"]["requests"]
        with pytest.raises(openai.InternalServerError) as caught:
            client(gw).chat.completions.create(
                model=MODEL, messages=MESSAGES, extra_headers={"x-mock-fault": "500"}
            )
        assert caught.value.status_code == 500
        assert caught.value.response.json()["error"]["code"] == "internal_error"
        assert plain_upstream.status()["totals"]["requests"] - before == 3
        # Every attempt was admitted (and charged) again: the upstream counted each one.
        assert gw.status()["limits"]["rpm"]["used"] == 3


def test_random_503s_are_retried_until_they_succeed(redis_url: str, redis_prefix: str) -> None:
    with mock_and_gateway(
        {"FAULT_503_RATE": "0.3", "SEED": "7"},
        UPSTREAM_RETRIES="8",
        RPM_LIMIT="1000",
        **on_redis(redis_url, redis_prefix),
    ) as (flaky, gw):
        calls = [Background(lambda: chat(gw)) for _ in range(10)]
        assert [c.join().status_code for c in calls] == [200] * 10
        upstream_totals = flaky.status()["totals"]
        assert upstream_totals["errors"] >= 1, "some attempts failed and were retried"
        assert gw.status()["limits"]["rpm"]["used"] == upstream_totals["requests"]


def test_unreachable_upstream_is_502_after_retries() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with gateway(dead, UPSTREAM_RETRIES="2", RPM_LIMIT="1000") as gw:
        response = chat(gw)
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_unreachable"
        assert gw.status()["limits"]["rpm"]["used"] == 3
        ready = httpx.get(f"{gw.url}/readyz")
        assert ready.status_code == 503
        assert ready.json()["upstream"] is False


def test_drift_is_followed_when_the_upstream_has_less_left_than_we_think() -> None:
    with mock_and_gateway({"RPM_LIMIT": "10"}, RPM_LIMIT="10") as (shared, gw):
        for _ in range(8):  # another client of the same upstream
            assert chat(shared).status_code == 200
        first = chat(gw)
        assert first.status_code == 200
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        # The budget follows what the upstream leaves: 1 more now, where our record had 9.
        status = gw.status()
        assert status["limits"]["rpm"] == status["limits"]["rpm"] | {"limit": 2, "used": 1, "remaining": 1}
        assert status["budgets"][0]["following"]["limits"]["rpm"]["reason"] == "room"
        assert metric(gw, "apim_budget_drift", limit="requests") == -8
        assert chat(gw).status_code == 200
        refused = chat(gw, headers={"x-apim-timeout-ms": "1000"})
        assert refused.status_code == 429, "refused by the gateway: the upstream has nothing left"
        assert shared.status()["totals"]["rate_limited"] == 0


def test_the_upstream_saying_0_left_while_we_count_room_pauses_until_its_reset() -> None:
    with mock_and_gateway({"RPM_LIMIT": "10"}, RPM_LIMIT="10") as (shared, gw):
        for _ in range(9):  # another client leaves exactly one request
            assert chat(shared).status_code == 200
        last = chat(gw)
        assert last.status_code == 200
        assert last.headers["x-ratelimit-remaining-requests"] == "0"
        assert gw.status()["paused_s"] > 0, "paused until the upstream's reset"
        assert metric(gw, "apim_drift_pauses_total") == 1


def test_no_pause_when_our_own_view_is_also_exhausted() -> None:
    with mock_and_gateway({"RPM_LIMIT": "3"}, RPM_LIMIT="3") as (_exact, gw):
        for _ in range(3):
            assert chat(gw).status_code == 200
        status = gw.status()
        assert status["limits"]["rpm"]["remaining"] == 0
        assert status["paused_s"] == 0
        assert metric(gw, "apim_drift_pauses_total") == 0


# --- accounting mirrors the upstream --------------------------------------------------------------


def test_usage_above_the_estimate_is_charged_like_the_upstream_does() -> None:
    # The `max` rule can under-estimate (prompt + completion above both max_tokens and chars/4):
    # both sides charge the excess once the usage is known, so their views stay equal.
    # Single digits are about one token per two characters: far above the chars/4 estimate.
    prompt = [{"role": "user", "content": " ".join(str(i % 10) for i in range(400))}]
    with mock_and_gateway(
        {"TPM_LIMIT": "100000", "COST_RULE": "max"}, TPM_LIMIT="100000", COST_RULE="max"
    ) as (
        upstream,
        gw,
    ):
        plain = chat(gw, messages=prompt, max_tokens=40)
        assert plain.status_code == 200
        streamed = list(
            client(gw).chat.completions.create(model=MODEL, messages=prompt, max_tokens=40, stream=True)
        )
        assert streamed
        assert metric(gw, "apim_tokens_charged_total", kind="excess") > 0
        ours, theirs = gw.status()["limits"]["tpm"]["used"], upstream.status()["limits"]["tpm"]["used"]
        assert ours == theirs
        usage = plain.json()["usage"]["total_tokens"]
        assert ours > usage


def test_refund_mode_returns_the_unused_estimate() -> None:
    with mock_and_gateway(
        {"TPM_LIMIT": "100000", "REFUND_UNUSED": "true"}, TPM_LIMIT="100000", REFUND_UNUSED="true"
    ) as (upstream, gw):
        reply = client(gw).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=500)
        assert reply.usage is not None
        assert reply.usage.total_tokens < 500
        assert gw.status()["limits"]["tpm"]["used"] == reply.usage.total_tokens
        assert upstream.status()["limits"]["tpm"]["used"] == reply.usage.total_tokens
        assert metric(gw, "apim_tokens_refunded_total", kind="unused") > 0


def test_without_refund_mode_the_estimate_stays_charged() -> None:
    with mock_and_gateway({"TPM_LIMIT": "100000"}, TPM_LIMIT="100000") as (upstream, gw):
        reply = client(gw).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=500)
        assert reply.usage is not None
        used = gw.status()["limits"]["tpm"]["used"]
        assert used == reply.usage.prompt_tokens + 500
        assert upstream.status()["limits"]["tpm"]["used"] == used


# --- settings and start-up ----------------------------------------------------------------------------


def run_main(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "apim_server", "--host", "127.0.0.1", "--port", str(free_port()), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APIM_RPM_LIMIT", "-1"),
        ("APIM_QUEUE_TIMEOUT_S", "soon"),
        ("APIM_SHORT_WINDOW_S", "7"),
        ("APIM_COST_RULE", "avg"),
        ("APIM_UPSTREAM_URL", "ftp://example"),
        ("APIM_DAILY_RESET_TZ", "Mars/Olympus"),
    ],
)
def test_bad_setting_fails_at_start_with_one_line_naming_it(name: str, value: str) -> None:
    done = run_main({name: value})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert name in lines[0]


def test_several_workers_without_redis_refuse_to_start() -> None:
    done = run_main({"APIM_REDIS_URL": ""}, "--workers", "2")
    assert done.returncode == 2
    assert "APIM_REDIS_URL" in done.stderr
