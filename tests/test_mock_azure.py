"""The mock as Azure OpenAI: its paths and ``api-key`` for the SDK's unchanged ``AzureOpenAI``
client, and with ``MOCK_FLAVOR=azure`` Azure's 429 body, header set and derived RPM."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from tests.processes import Service, running

API_VERSION = "2024-10-21"
KEY = "azure-key-0123456789"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Hello, Azure."}]
AZURE_429 = re.compile(
    r"^Requests to the (?P<op>\w+) Operation under Azure OpenAI API version (?P<version>[\w-]+) have "
    r"exceeded (?P<kind>token|call) rate limit of your current OpenAI S0 pricing tier\. Please retry after "
    r"(?P<seconds>\d+) seconds?\. Please go here: https://aka\.ms/oai/quotaincrease if you would like to "
    r"further increase the default rate limit\.$"
)


def _env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "MOCK_REDIS_URL": redis_url,
        "MOCK_REDIS_PREFIX": f"test-mock-{uuid.uuid4().hex[:12]}",
        "MOCK_API_KEYS": KEY,
        "MOCK_ADMIN": "true",
        "MOCK_LOG_REQUESTS": "false",
        **extra,
    }


@pytest.fixture(scope="module")
def mock(redis_url: str) -> Iterator[Service]:
    with running("llm_mock_server", env=_env(redis_url, MOCK_RPM_LIMIT="100")) as service:
        yield service


@pytest.fixture
def azure(mock: Service) -> openai.AzureOpenAI:
    httpx.post(f"{mock.url}/admin/reset", headers={"api-key": KEY}, timeout=5).raise_for_status()
    return openai.AzureOpenAI(azure_endpoint=mock.url, api_version=API_VERSION, api_key=KEY, max_retries=0)


def test_azure_client_chat_plain_and_streaming(azure: openai.AzureOpenAI) -> None:
    raw = azure.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    assert raw.http_request.url.path == f"/openai/deployments/{MODEL}/chat/completions"
    assert raw.http_request.headers["api-key"] == KEY
    reply = ChatCompletion.model_validate_json(raw.content)
    assert reply.model == MODEL
    assert reply.choices[0].message.content
    chunks = list(azure.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content


def test_azure_client_embeddings_completions_responses(azure: openai.AzureOpenAI) -> None:
    raw = azure.embeddings.with_raw_response.create(model="text-embedding-3-small", input="vector")
    assert raw.http_request.url.path == "/openai/deployments/text-embedding-3-small/embeddings"
    # The SDK asks for base64 and decodes it: the wire holds a string, the parsed reply floats.
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)
    assert len(raw.parse().data[0].embedding) == 1536
    floats = azure.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="vector", encoding_format="float"
    )
    assert CreateEmbeddingResponse.model_validate_json(floats.content).data[0].embedding == (
        raw.parse().data[0].embedding
    )

    done = azure.completions.with_raw_response.create(model=MODEL, prompt="Once", max_tokens=10)
    assert done.http_request.url.path == f"/openai/deployments/{MODEL}/completions"
    assert Completion.model_validate_json(done.content).choices[0].text
    streamed = list(azure.completions.create(model=MODEL, prompt="Once", max_tokens=10, stream=True))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.parse().choices[0].text

    response = azure.responses.with_raw_response.create(model=MODEL, input="Hi", max_output_tokens=30)
    assert response.http_request.url.path == "/openai/responses"
    assert response.parse().output_text
    with azure.responses.create(model=MODEL, input="Hi", max_output_tokens=30, stream=True) as stream:
        events = [e.type for e in stream]
    assert events[0] == "response.created"
    assert events[-1] in ("response.completed", "response.incomplete")


def test_deployment_in_the_path_names_the_model(mock: Service, azure: openai.AzureOpenAI) -> None:
    pinned = openai.AzureOpenAI(
        azure_endpoint=mock.url,
        azure_deployment="gpt-4o",
        api_version=API_VERSION,
        api_key=KEY,
        max_retries=0,
    )
    # Azure ignores the body's model: the deployment decides.
    assert pinned.chat.completions.create(model="anything", messages=MESSAGES).model == "gpt-4o"
    with pytest.raises(openai.NotFoundError) as caught:
        azure.chat.completions.create(model="no-such-deployment", messages=MESSAGES)
    assert caught.value.code == "DeploymentNotFound"
    assert set(caught.value.body) == {"code", "message"}  # type: ignore[arg-type]


def test_v1_api_path(mock: Service, azure: openai.AzureOpenAI) -> None:
    client = openai.OpenAI(base_url=f"{mock.url}/openai/v1", api_key=KEY, max_retries=0)
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES).choices[0].message.content
    assert client.embeddings.create(model="text-embedding-3-large", input="x").data[0].embedding
    assert client.models.retrieve(MODEL).id == MODEL


def test_api_key_auth_and_api_version_required(mock: Service, azure: openai.AzureOpenAI) -> None:
    wrong = openai.AzureOpenAI(
        azure_endpoint=mock.url, api_version=API_VERSION, api_key="nope", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=MODEL, messages=MESSAGES)
    path = f"{mock.url}/openai/deployments/{MODEL}/chat/completions"
    body = {"messages": MESSAGES}
    assert httpx.post(path, json=body, headers={"api-key": KEY}, timeout=5).status_code == 404
    ok = httpx.post(path, params={"api-version": API_VERSION}, json=body, headers={"api-key": KEY}, timeout=5)
    assert ok.status_code == 200
    assert ok.json()["model"] == MODEL


# --- MOCK_FLAVOR=azure ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def flavored(redis_url: str) -> Iterator[Service]:
    env = _env(redis_url, MOCK_FLAVOR="azure", MOCK_TPM_LIMIT="1000")
    with running("llm_mock_server", env=env) as service:
        yield service


@pytest.fixture
def flavored_client(flavored: Service) -> openai.AzureOpenAI:
    httpx.post(f"{flavored.url}/admin/reset", headers={"api-key": KEY}, timeout=5).raise_for_status()
    return openai.AzureOpenAI(
        azure_endpoint=flavored.url, api_version=API_VERSION, api_key=KEY, max_retries=0
    )


def test_rpm_derived_from_tpm_with_short_windows(flavored: Service) -> None:
    status = httpx.get(f"{flavored.url}/status", params={"api_key": KEY}, timeout=5).json()
    assert status["flavor"] == "azure"
    assert status["limits"]["rpm"]["limit"] == 6  # 6 per 1,000 TPM
    assert status["limits"]["rp10s"]["limit"] == 1  # 6 per minute is 1 per 10 s


def test_azure_call_rate_429(flavored_client: openai.AzureOpenAI) -> None:
    first = flavored_client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=10
    )
    assert first.headers["x-ratelimit-remaining-requests"] == "5"
    assert "x-ratelimit-remaining-tokens" in first.headers
    # Azure sends no limit or reset headers.
    assert not any(h.startswith(("x-ratelimit-limit-", "x-ratelimit-reset-")) for h in first.headers)
    with pytest.raises(openai.RateLimitError) as caught:
        flavored_client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10)
    error = caught.value
    body = error.body
    assert isinstance(body, dict)
    assert set(body) == {"code", "message"}
    assert body["code"] == "429"
    match = AZURE_429.match(body["message"])
    assert match, body
    assert match["op"] == "ChatCompletions_Create"
    assert match["version"] == API_VERSION
    assert match["kind"] == "call"  # the 10 s sub-window is what binds
    assert 1 <= int(match["seconds"]) <= 10
    headers = error.response.headers
    assert headers["retry-after"] == match["seconds"]
    assert 0 < int(headers["retry-after-ms"]) <= 10_000
    assert headers["x-ratelimit-remaining-requests"] == "5"


def test_azure_token_rate_429_names_the_operation(flavored_client: openai.AzureOpenAI) -> None:
    text = " ".join(["word"] * 600)
    flavored_client.embeddings.create(model="text-embedding-3-small", input=text)
    with pytest.raises(openai.RateLimitError) as caught:
        flavored_client.embeddings.create(model="text-embedding-3-small", input=text)
    match = AZURE_429.match(caught.value.body["message"])  # type: ignore[index]
    assert match, caught.value.body
    assert match["op"] == "Embeddings_Create"
    assert match["kind"] == "token"  # tokens wait longer than the 10 s window
    assert int(match["seconds"]) > 10


def test_azure_refuses_a_wrong_key_in_its_words(flavored: Service) -> None:
    wrong = openai.AzureOpenAI(
        azure_endpoint=flavored.url, api_version=API_VERSION, api_key="no", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        wrong.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.body == {
        "code": "401",
        "message": "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API endpoint for your "
        "resource.",
    }


def test_azure_forced_429_and_v1_path_version(flavored: Service, flavored_client: openai.AzureOpenAI) -> None:
    answer = httpx.post(
        f"{flavored.url}/openai/v1/completions",
        json={"model": MODEL, "prompt": "x", "max_tokens": 5},
        headers={"api-key": KEY, "x-mock-fault": "429"},
        timeout=5,
    )
    assert answer.status_code == 429
    match = AZURE_429.match(answer.json()["error"]["message"])
    assert match
    assert match["op"] == "Completions_Create"
    assert match["version"] == "v1"


def test_too_large_is_refused_at_once_in_both_flavors(flavored_client: openai.AzureOpenAI) -> None:
    # An input above the whole TPM can never fit: OpenAI's "Request too large" (not Azure's
    # "retry after", which would make a client or gateway wait for nothing), never retried.
    with pytest.raises(openai.RateLimitError) as caught:
        flavored_client.embeddings.create(model="text-embedding-3-small", input=" ".join(["word"] * 1200))
    assert (
        caught.value.message.startswith("Error code: 429 - ") or "Request too large" in caught.value.message
    )
    assert "Request too large" in str(caught.value.body)
    assert caught.value.response.headers["x-should-retry"] == "false"
