"""The mock's test controls for following the upstream: ``POST /admin/limits`` lowers a key's
(and model's) limits at run time and restores them, and capacity 429s (the service overloaded,
not the key's limits) in each flavor's words. Real processes, the official SDK."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import Service, running
from tests.test_apim_e2e import MESSAGES, MODEL, mock, mock_env

KEY = "sk-mock-admin-0123"
OTHER = "sk-mock-admin-4567"


def admin_limits(service: Service, key: str | None = KEY, **body: object) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{service.url}/admin/limits", json=body, headers=headers, timeout=5)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    models = tmp_path_factory.mktemp("mock") / "models.yaml"
    models.write_text("models:\n  gpt-4o: {rpm: 50, tpm: 40000}\n")
    with mock(API_KEYS=f"{KEY},{OTHER}", TPM_LIMIT="60000", RPM_LIMIT="100", CONFIG=str(models)) as service:
        yield service


def sdk(service: Service, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=service.v1, api_key=key, max_retries=0)


def test_a_lowered_limit_is_enforced_and_reported_then_restored(upstream: Service) -> None:
    httpx.post(f"{upstream.url}/admin/reset", headers={"authorization": f"Bearer {KEY}"}, timeout=5)
    first = sdk(upstream).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=100
    )
    assert first.headers["x-ratelimit-limit-tokens"] == "60000"
    cost = 60000 - int(first.headers["x-ratelimit-remaining-tokens"])

    lowered = admin_limits(upstream, tpm=2 * cost)
    assert lowered.status_code == 200
    assert lowered.json()["limits"]["tpm"] == 2 * cost
    assert lowered.json()["configured"]["tpm"] == 60000
    assert lowered.json()["overridden"] is True
    # The record is kept: what was admitted under the old limit counts under the new one.
    second = sdk(upstream).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=100
    )
    assert second.headers["x-ratelimit-limit-tokens"] == str(2 * cost)
    assert second.headers["x-ratelimit-remaining-tokens"] == "0"
    with pytest.raises(openai.RateLimitError) as refused:
        sdk(upstream).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=100)
    assert f"Limit {2 * cost}, Used {2 * cost}" in refused.value.message
    assert (
        httpx.get(f"{upstream.url}/status", params={"api_key": KEY}).json()["limits"]["tpm"]["limit"]
        == 2 * cost
    )
    # Another key and a model with limits of its own keep theirs.
    other = sdk(upstream, OTHER).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=5
    )
    assert other.headers["x-ratelimit-limit-tokens"] == "60000"
    own = sdk(upstream).chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, max_tokens=5
    )
    assert own.headers["x-ratelimit-limit-tokens"] == "40000"

    restored = admin_limits(upstream, restore=True)
    assert restored.json()["limits"]["tpm"] == 60000
    assert restored.json()["overridden"] is False
    third = sdk(upstream).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=100
    )
    assert third.headers["x-ratelimit-limit-tokens"] == "60000"


def test_a_models_own_limits_can_be_lowered_apart(upstream: Service) -> None:
    lowered = admin_limits(upstream, key=OTHER, api_key=OTHER, model="gpt-4o", rpm=3)
    assert lowered.json() == {
        "api_key": "sk-...4567",
        "model": "gpt-4o",
        "limits": {"rpm": 3, "tpm": 40000, "rpd": 0, "tpd": 0},
        "configured": {"rpm": 50, "tpm": 40000, "rpd": 0, "tpd": 0},
        "overridden": True,
    }
    try:
        reply = sdk(upstream, OTHER).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=MESSAGES, max_tokens=5
        )
        assert reply.headers["x-ratelimit-limit-requests"] == "3"
        shared = sdk(upstream, OTHER).chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=5
        )
        assert shared.headers["x-ratelimit-limit-requests"] == "100"
    finally:
        admin_limits(upstream, key=OTHER, api_key=OTHER, model="gpt-4o", restore=True)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tpm": -1}, "tpm"),
        ({"tpm": "many"}, "tpm"),
        ({"tpm": 10, "burst": 3}, "burst"),
        ({}, "restore"),
        ({"tpm": 10, "restore": True}, "restore"),
        ({"api_key": "sk-nobody", "tpm": 10}, "api_key"),
        ({"model": MODEL, "tpm": 10}, "model"),  # no limits of its own: the key's budget is changed
    ],
)
def test_bad_changes_are_refused_in_openais_shape(
    upstream: Service, body: dict[str, object], param: str
) -> None:
    answer = admin_limits(upstream, **body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert answer.json().keys() == {"error"}


def test_unknown_models_keys_and_a_mock_without_admin(upstream: Service) -> None:
    unknown = admin_limits(upstream, model="gpt-9", tpm=10)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert admin_limits(upstream, key="sk-wrong", tpm=10).status_code == 401
    with running("llm_mock_server", env=mock_env(ADMIN="false")) as closed:
        assert admin_limits(closed, key=None, tpm=10).status_code == 404


def test_capacity_429s_in_openais_words_count_nothing(upstream: Service) -> None:
    before = httpx.get(f"{upstream.url}/status", params={"api_key": OTHER}).json()["limits"]["rpm"]["used"]
    with pytest.raises(openai.RateLimitError) as caught:
        sdk(upstream, OTHER).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=5, extra_headers={"x-mock-fault": "capacity"}
        )
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["message"].startswith("That model is currently overloaded with other requests.")
    assert error["type"] == "server_error" and error["code"] is None
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "100"
    status = httpx.get(f"{upstream.url}/status", params={"api_key": OTHER}).json()
    assert status["limits"]["rpm"]["used"] == before, "the key's budget is not charged"
    assert status["totals"]["capacity_rejected"] >= 1


def test_capacity_429s_at_a_rate_in_azures_words(tmp_path: Path) -> None:
    with mock(FLAVOR="azure", FAULT_CAPACITY_RATE="0.5", FAULT_CAPACITY_RETRY_MS="2500", SEED="3") as azure:
        client = openai.AzureOpenAI(
            azure_endpoint=azure.url, api_version="2024-10-21", api_key="unused", max_retries=0
        )
        outcomes = []
        for _ in range(12):
            try:
                client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
                outcomes.append("ok")
            except openai.RateLimitError as exc:
                outcomes.append("capacity")
                assert isinstance(exc.body, dict)
                assert exc.body == {
                    "code": "429",
                    "message": "The system is currently experiencing high demand and cannot process your "
                    "request. Your request exceeds the maximum usage size allowed during peak load. Please "
                    "retry after 3 seconds. For improved latency reliability, consider switching to "
                    "Provisioned Throughput.",
                }
                assert exc.response.headers["retry-after-ms"] == "2500"
        assert "ok" in outcomes and "capacity" in outcomes
        status = azure.status()
        assert status["totals"]["capacity_rejected"] == outcomes.count("capacity")
        assert status["totals"]["rate_limited"] == 0
