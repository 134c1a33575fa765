"""Everything but a plain answer: bad input, auth, per-key limits, faults, test control, counters."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from llm_mock_server.app import create_app
from llm_mock_server.config import MockSettings
from ratelimit.tokens import TokenCounter
from tests.processes import Service, free_port, running

MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello"}]
BODY = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5}
KEY_A = "sk-test-alpha-000000000001"
KEY_B = "sk-test-bravo-000000000002"
RPM = 3
TPM = 2000


@pytest.fixture(scope="module")
def mock() -> Iterator[Service]:
    env = {
        "MOCK_API_KEYS": f"{KEY_A},{KEY_B}",
        "MOCK_ADMIN": "true",
        "MOCK_RPM_LIMIT": str(RPM),
        "MOCK_TPM_LIMIT": str(TPM),
        "MOCK_MAX_BODY_BYTES": "4096",
        "MOCK_FAULT_SLOW_MS": "2000",
        "MOCK_LOG_REQUESTS": "true",
    }
    with running("llm_mock_server", env=env) as service:
        yield service


@pytest.fixture
def http(mock: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mock.url, headers={"authorization": f"Bearer {KEY_A}"}, timeout=10) as client:
        client.post("/admin/reset").raise_for_status()
        yield client


def sdk(mock: Service, key: str = KEY_A, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=mock.v1, api_key=key, max_retries=retries)


def assert_openai_error(response: httpx.Response, status: int, **expected: Any) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str)
    assert error["message"]
    for name, value in expected.items():
        assert error[name] == value, error
    return error


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "content_type", "param"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [', "application/json", None),
        (b"", "application/json", None),
        (b'{"model": "gpt-4o-mini"}', "application/json", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "application/json", "messages"),
        (b'{"model": "gpt-4o-mini", "messages": "hello"}', "application/json", "messages"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "application/json", "model"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}',
         "application/json", "max_tokens"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 0}',
         "application/json", "n"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "robot", "content": "hi"}]}',
         "application/json", "messages.0.role"),
        (b'[{"model": "gpt-4o-mini"}]', "application/json", None),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}', "text/plain", None),
        (b"model=gpt-4o-mini", "application/x-www-form-urlencoded", None),
    ],
)  # fmt: skip
def test_bad_input_is_400_in_openai_shape(
    http: httpx.Client, content: bytes, content_type: str, param: str | None
) -> None:
    response = http.post("/v1/chat/completions", content=content, headers={"content-type": content_type})
    error = assert_openai_error(response, 400, type="invalid_request_error", param=param)
    if param:
        assert f"'{param}'" in error["message"]
    # Known key: the answer still says where the budget stands.
    assert response.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert re.fullmatch(r"req_[0-9a-f]{32}", response.headers["x-request-id"])


def test_malformed_json_message(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    error = assert_openai_error(response, 400)
    assert error["message"].startswith("We could not parse the JSON body of your request.")


def test_missing_messages_message(http: httpx.Client) -> None:
    error = assert_openai_error(http.post("/v1/chat/completions", json={"model": MODEL}), 400)
    assert error["message"] == "Missing required parameter: 'messages'."


def test_too_large_body_is_413(http: httpx.Client) -> None:
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_openai_error(http.post("/v1/chat/completions", json=big), 413, code="request_too_large")


def test_unknown_model_is_404_model_not_found(mock: Service, http: httpx.Client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(mock).chat.completions.create(model="gpt-9-ultra", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "model_not_found"
    assert caught.value.body["message"] == (  # type: ignore[index]
        "The model `gpt-9-ultra` does not exist or you do not have access to it."
    )
    models = sdk(mock).models.list()
    assert MODEL in [m.id for m in models.data]
    assert sdk(mock).models.retrieve("gpt-4").id == "gpt-4"
    assert_openai_error(http.get("/v1/models/gpt-9-ultra"), 404, code="model_not_found")


def test_unknown_path_is_404_in_openai_shape(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/nothing-here"), 404)


# --- auth and per-key limits --------------------------------------------------------------


def test_wrong_or_missing_key_is_401(mock: Service) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(mock, key="sk-wrong-key-0000abcd").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.body["message"].startswith(  # type: ignore[index]
        "Incorrect API key provided: sk-...abcd. You can find your API key at "
    )
    missing = httpx.post(f"{mock.v1}/chat/completions", json=BODY, timeout=5)
    assert_openai_error(missing, 401, code="invalid_api_key", type="invalid_request_error")
    assert_openai_error(httpx.get(f"{mock.v1}/models", timeout=5), 401, code="invalid_api_key")
    # Azure clients send the key in api-key.
    azure = httpx.post(f"{mock.v1}/chat/completions", json=BODY, headers={"api-key": KEY_B}, timeout=5)
    assert azure.status_code == 200


def test_limits_are_kept_per_key(mock: Service, http: httpx.Client) -> None:
    a, b = sdk(mock, KEY_A), sdk(mock, KEY_B)
    for _ in range(RPM):
        a.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    with pytest.raises(openai.RateLimitError):
        a.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    raw = b.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert raw.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)
    status_a = http.get("/status").json()  # the first configured key is the default
    status_b = http.get("/status", params={"api_key": KEY_B}).json()
    assert status_a["limits"]["rpm"]["used"] == RPM
    assert status_b["limits"]["rpm"]["used"] == 1


# --- limits ---------------------------------------------------------------------------------


def test_request_too_large_is_refused_at_once(mock: Service, http: httpx.Client) -> None:
    prompt = TokenCounter().count_messages(MESSAGES, MODEL)
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(mock, retries=2).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=TPM)
    assert caught.value.type == "tokens"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.body["message"] == (  # type: ignore[index]
        f"Request too large for {MODEL} in organization org-mock on tokens per min (TPM): "
        f"Limit {TPM}, Requested {prompt + TPM}. The input or output tokens must be reduced in order to "
        "run successfully. Visit https://platform.openai.com/account/rate-limits to learn more."
    )
    assert caught.value.response.headers["x-should-retry"] == "false"
    # Nothing was charged, and the SDK did not retry (it would have charged nothing either).
    assert http.get("/status").json()["limits"]["rpm"]["used"] == 0


def test_tokens_per_minute_429(mock: Service) -> None:
    client = sdk(mock)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1500)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1000)
    assert caught.value.type == "tokens"
    assert "on tokens per min (TPM): Limit 2000, Used " in caught.value.message


# --- faults and test control ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error"), [("500", openai.InternalServerError), ("503", openai.APIStatusError)]
)
def test_forced_server_errors_count_against_the_limits(
    mock: Service, http: httpx.Client, fault: str, error: type[Exception]
) -> None:
    client = sdk(mock).with_options(default_headers={"x-mock-fault": fault})
    with pytest.raises(error) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == int(fault)  # type: ignore[attr-defined]
    assert caught.value.type == "server_error"  # type: ignore[attr-defined]
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)  # type: ignore[attr-defined]
    assert http.get("/status").json()["limits"]["rpm"]["used"] == 1


def test_forced_429_has_the_rate_limit_shape(mock: Service, http: httpx.Client) -> None:
    client = sdk(mock).with_options(default_headers={"x-mock-fault": "429"})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    assert caught.value.code == "rate_limit_exceeded"
    assert re.match(
        rf"^Rate limit reached for {MODEL} in organization org-mock on requests per min \(RPM\): "
        rf"Limit {RPM}, Used 0, Requested 1\. Please try again in ",
        caught.value.body["message"],  # type: ignore[index]
    )
    headers = caught.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) > 0


def test_dropped_connection(mock: Service, http: httpx.Client) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=BODY, headers={"x-mock-fault": "drop"})
    client = sdk(mock).with_options(default_headers={"x-mock-fault": "drop"})
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    # The server is fine afterwards, and both dropped requests were charged.
    response = http.post("/v1/chat/completions", json=BODY)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "0"


def test_slow_answer(http: httpx.Client) -> None:
    # A timeout far below the configured 2 s delay: the answer cannot arrive in time.
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=BODY, headers={"x-mock-fault": "slow"}, timeout=0.3)
    http.post("/admin/reset").raise_for_status()
    response = http.post("/v1/chat/completions", json=BODY, headers={"x-mock-fault": "slow"}, timeout=30)
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 5


def test_unknown_fault_is_400(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=BODY, headers={"x-mock-fault": "teapot"})
    error = assert_openai_error(response, 400, param="x-mock-fault")
    assert "429, 500, 503, slow, drop" in error["message"]


def test_admin_reset_of_one_key_or_all(mock: Service, http: httpx.Client) -> None:
    a, b = sdk(mock, KEY_A), sdk(mock, KEY_B)
    for client in (a, b):
        for _ in range(RPM):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    http.post("/admin/reset", params={"api_key": KEY_A}).raise_for_status()
    a.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError):
        b.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)
    assert http.post("/admin/reset").json() == {"reset": ["sk-...0001", "sk-...0002"]}
    b.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1)


def test_status_and_metrics_move(mock: Service, http: httpx.Client) -> None:
    def metric(text: str, name: str, **labels: str) -> float:
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            series, _, value = line.rpartition(" ")
            if series.startswith(name + "{"):
                got = ",".join(sorted(series[len(name) + 1 : -1].split(",")))
                if got == wanted:
                    return float(value)
        return 0.0

    before_status, before = http.get("/status").json(), http.get("/metrics").text
    client = sdk(mock)
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.InternalServerError):
        client.with_options(default_headers={"x-mock-fault": "500"}).chat.completions.create(
            model=MODEL, messages=MESSAGES
        )
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
    status, after = http.get("/status").json(), http.get("/metrics").text

    moved = {
        k: status["totals"][k] - before_status["totals"][k] for k in ("requests", "rate_limited", "errors")
    }
    assert moved == {"requests": 4, "rate_limited": 1, "errors": 1}
    assert status["limits"]["rpm"]["remaining"] == 0

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("llm_mock_requests_total", model=MODEL, status="200") == 2
    assert delta("llm_mock_requests_total", model=MODEL, status="500") == 1
    assert delta("llm_mock_requests_total", model=MODEL, status="429") == 1
    assert delta("llm_mock_rate_limited_total", limit="rpm", reason="limit") == 1
    assert delta("llm_mock_tokens_total", model=MODEL, kind="completion") == 8
    assert delta("llm_mock_request_duration_seconds_count", stream="false") == 4
    assert delta("llm_mock_faults_total", fault="500") == 1
    assert metric(after, "llm_mock_ratelimit_remaining", api_key="sk-...0001", limit="rpm") == 0
    assert metric(after, "llm_mock_ratelimit_limit", limit="tpm") == TPM


# --- without admin mode -----------------------------------------------------------------------


def test_fault_header_and_admin_are_off_by_default() -> None:
    with running("llm_mock_server", env={"MOCK_LOG_REQUESTS": "false", "MOCK_ADMIN": "false"}) as service:
        answered = httpx.post(
            f"{service.v1}/chat/completions", json=BODY, headers={"x-mock-fault": "500"}, timeout=5
        )
        assert answered.status_code == 200
        assert_openai_error(httpx.post(f"{service.url}/admin/reset", timeout=5), 404)
        assert service.status()["admin"] is False


# --- in process: random faults and store failure --------------------------------------------


async def test_random_faults_follow_the_rates_and_the_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        settings = MockSettings(
            _env_file=None, rpm_limit=0, tpm_limit=0, fault_500_rate=0.3, fault_503_rate=0.3, seed=seed,
            log_requests=False,
        )  # fmt: skip
        app = create_app(settings)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
            return [(await client.post("/v1/chat/completions", json=BODY)).status_code for _ in range(60)]

    first = await statuses(seed=1)
    assert set(first) == {200, 500, 503}
    assert await statuses(seed=1) == first
    assert await statuses(seed=2) != first


async def test_unreachable_redis_makes_readyz_503() -> None:
    settings = MockSettings(
        _env_file=None, redis_url=f"redis://127.0.0.1:{free_port()}/0", log_requests=False
    )
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
        assert (await client.get("/healthz")).status_code == 200
        assert_openai_error(await client.get("/readyz"), 503, code="store_unavailable")
        assert_openai_error(await client.post("/v1/chat/completions", json=BODY), 503, type="server_error")
    await app.close()
