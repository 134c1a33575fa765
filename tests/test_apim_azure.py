"""The gateway and Azure OpenAI: the SDK's unchanged ``AzureOpenAI`` client against the gateway
(its paths, its ``api-key`` header for the gateway's caller keys, its deployment names routed
like model names), and deployments of ``kind: azure`` in front of a ``MOCK_FLAVOR=azure`` mock
(the deployment URL, api-version and ``api-key`` the gateway sends, Azure's 429s never met)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import ResponseCompletedEvent

from apim_server.budget import Budget, Deployment
from apim_server.config import Settings
from apim_server.config_file import from_settings
from apim_server.following import Following
from apim_server.metrics import Metrics
from apim_server.upstream import Upstream, remaining_and_reset
from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import Cost, Limits
from tests.processes import Service, running
from tests.test_apim_e2e import MESSAGES, MODEL, gateway_env, mock, mock_and_gateway

API_VERSION = "2024-10-21"
GATEWAY_KEY = "gw-caller-key-0123"
UPSTREAM_KEY = "azure-upstream-key-4567"
EMBEDDING = "text-embedding-3-small"
TPM = 100_000  # Azure's rule: 600 RPM, enforced as 10 requests per 1 s sub-window
BURST = 25


def azure_client(gw: Service, **kwargs: object) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=gw.url, api_version=API_VERSION, api_key=GATEWAY_KEY, max_retries=0, **kwargs
    )


def test_upstream_of_kind_azure_builds_deployment_urls_and_sends_api_key() -> None:
    up = Upstream(
        "https://east.example.openai.azure.com",
        UPSTREAM_KEY,
        4,
        5,
        kind="azure",
        api_version="2024-06-01",
        azure_names={"gpt-4o-mini": "mini-prod"},
    )
    assert str(up.url("/v1/chat/completions", "gpt-4o-mini")) == (
        "https://east.example.openai.azure.com/openai/deployments/mini-prod/chat/completions"
        "?api-version=2024-06-01"
    )
    # A model without a deployment name in the file is its own deployment name.
    assert str(up.url("/v1/embeddings", EMBEDDING)).endswith(
        f"/openai/deployments/{EMBEDDING}/embeddings?api-version=2024-06-01"
    )
    assert str(up.url("/v1/responses", "gpt-4o-mini")).endswith("/openai/responses?api-version=2024-06-01")
    assert str(up.models_url).endswith("/openai/models?api-version=2024-06-01")
    chat = b'{"model":"gpt-4o-mini","messages":[]}'
    assert up.body_for("/v1/chat/completions", "gpt-4o-mini", chat) is chat  # the path names it
    responses = up.body_for("/v1/responses", "gpt-4o-mini", b'{"model":"gpt-4o-mini","input":"x"}')
    assert json.loads(responses) == {"model": "mini-prod", "input": "x"}
    sent = dict(up.headers([(b"authorization", b"Bearer caller"), (b"api-key", b"caller")], "req_1"))
    assert sent[b"api-key"] == UPSTREAM_KEY.encode()
    assert b"authorization" not in sent
    openai_style = Upstream("https://api.openai.com/v1", "sk-x", 4, 5)
    assert str(openai_style.url("/v1/embeddings", "m")) == "https://api.openai.com/v1/embeddings"
    assert dict(openai_style.headers((), "req_2"))[b"authorization"] == b"Bearer sk-x"


def test_azure_remaining_zero_without_a_reset_is_not_reset_now() -> None:
    """Azure sends ``x-ratelimit-remaining-*`` without resets: 0 left lasts the fallback."""
    assert remaining_and_reset({"x-ratelimit-remaining-tokens": "0"}, 10.0) == [("tokens", 0, 10.0)]
    assert remaining_and_reset(
        {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms"}, 10.0
    ) == [("tokens", 0, 0.02)]

    async def scenario() -> float:
        settings = Settings(_env_file=None)
        plan = from_settings(settings).deployments[0]
        deployment = Deployment(plan, Upstream(plan.url, "", 1, 1.0), 1024)
        store = EmbeddedStore()
        budget = Budget(deployment, "m", Limits(rpm=600, tpm=TPM, short_window_s=1), store)
        decision = await budget.acquire(Cost(1, 10))
        following = Following([budget], store, Metrics())
        # Our view has room, the upstream's says 0 (someone else spends the key): pause.
        following.observe(budget, {"x-ratelimit-remaining-tokens": "0"}, decision, "m")
        return budget.paused_for

    assert 0.5 < asyncio.run(scenario()) <= 1.0


def test_the_azure_client_works_unchanged_against_the_gateway() -> None:
    with mock_and_gateway({}, API_KEYS=GATEWAY_KEY) as (_upstream, gw):
        azure = azure_client(gw)
        raw = azure.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=8)
        assert raw.http_request.url.path == f"/openai/deployments/{MODEL}/chat/completions"
        assert raw.headers["x-apim-queue-ms"].isdigit()
        assert ChatCompletion.model_validate_json(raw.content).choices[0].message.content
        chunks = list(
            azure.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True)
        )
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        emb = azure.embeddings.with_raw_response.create(model=EMBEDDING, input="v", encoding_format="float")
        assert CreateEmbeddingResponse.model_validate_json(emb.content).usage.prompt_tokens == 1
        done = azure.completions.create(model=MODEL, prompt="Once", max_tokens=4)
        assert isinstance(done, Completion) and done.choices[0].text
        events = list(azure.responses.create(model=MODEL, input="Hi.", max_output_tokens=500, stream=True))
        assert isinstance(events[-1], ResponseCompletedEvent)
        assert azure.models.retrieve(MODEL).id == MODEL
        # The deployment pinned in the client names the model: the body's is ignored, as at Azure.
        pinned = azure_client(gw, azure_deployment=MODEL)
        reply = pinned.chat.completions.create(model="ignored", messages=MESSAGES, max_tokens=4)
        assert reply.model == MODEL
        # The api-key header is checked like a bearer key; Azure's path without api-version is a 404.
        wrong = openai.AzureOpenAI(
            azure_endpoint=gw.url, api_version=API_VERSION, api_key="wrong", max_retries=0
        )
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        bare = httpx.post(
            f"{gw.url}/openai/deployments/{MODEL}/chat/completions",
            json={"messages": MESSAGES},
            headers={"api-key": GATEWAY_KEY},
            timeout=5,
        )
        assert bare.status_code == 404
        assert bare.json()["error"]["message"]


@contextmanager
def azure_deployment(tmp_path: Path, upstream: Service, **gateway_settings: str) -> Iterator[Service]:
    """The gateway with one ``kind: azure`` deployment on the mock; ``my-chat`` is a model id
    clients send whose Azure deployment is ``gpt-4o-mini``."""
    config = tmp_path / "apim.yaml"
    config.write_text(
        "deployments:\n"
        "  - name: azure-local\n"
        "    kind: azure\n"
        f"    url: {upstream.url}\n"
        "    api_key: ${AZURE_KEY}\n"
        f'    api_version: "{API_VERSION}"\n'
        "    short_window_s: 1\n"
        "    models:\n"
        f"      my-chat: {{deployment: {MODEL}, tpm: {TPM}}}\n"
        f"      {EMBEDDING}: {{tpm: {TPM}}}\n"
    )
    env = gateway_env(upstream.v1, CONFIG=str(config), API_KEYS=GATEWAY_KEY, **gateway_settings)
    env["AZURE_KEY"] = UPSTREAM_KEY
    with running("apim_server", env=env) as gw:
        yield gw


def test_a_burst_to_a_kind_azure_deployment_meets_no_azure_429(tmp_path: Path) -> None:
    # Like Azure, one budget per deployment: the embedding model's apart from the chat model's.
    models = tmp_path / "mock.yaml"
    models.write_text(f"models:\n  {EMBEDDING}: {{rpm: 600, tpm: {TPM}}}\n")
    settings = {"FLAVOR": "azure", "TPM_LIMIT": str(TPM), "RPM_LIMIT": "600", "SHORT_WINDOW_S": "1"}
    with mock(**settings, API_KEYS=UPSTREAM_KEY, CONFIG=str(models)) as upstream:
        status = httpx.get(f"{upstream.url}/status", timeout=5).json()
        assert status["limits"]["rp1s"]["limit"] == 10  # RPM derived from TPM at the mock too
        with azure_deployment(tmp_path, upstream) as gw:
            budgets = {b["model"]: b["limits"] for b in gw.status()["budgets"]}
            assert budgets["my-chat"]["rpm"]["limit"] == 600  # derived: 6 per 1,000 TPM
            sdk = openai.OpenAI(base_url=gw.v1, api_key=GATEWAY_KEY, max_retries=0)

            def send(i: int) -> int:
                if i % 5 == 0:
                    sdk.embeddings.create(model=EMBEDDING, input=f"item {i}")
                    return 200
                reply = sdk.chat.completions.create(model="my-chat", messages=MESSAGES, max_tokens=5)
                assert reply.choices[0].message.content
                return 200

            with ThreadPoolExecutor(BURST) as pool:
                assert list(pool.map(send, range(BURST))) == [200] * BURST
            # Azure clients name the Azure deployment: it routes to the model it serves.
            azure = azure_client(gw)
            streamed = list(
                azure.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True)
            )
            assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            # Azure's Responses API is not deployment-scoped: the body names the Azure deployment.
            answer = sdk.responses.create(model="my-chat", input="Hi.", max_output_tokens=500)
            assert answer.model == MODEL and answer.output_text
            assert upstream.status()["totals"]["rate_limited"] == 0
            assert gw.status()["totals"]["upstream_429"] == 0
            assert upstream.status()["totals"]["requests"] == BURST + 2


def test_a_wrong_upstream_key_is_the_operators_problem(tmp_path: Path) -> None:
    """The key goes as ``api-key``: with the wrong one the Azure mock refuses, and the caller is
    told the gateway's credentials failed (not handed Azure's 401)."""
    with mock(FLAVOR="azure", API_KEYS="another-key") as upstream, azure_deployment(tmp_path, upstream) as gw:
        sdk = openai.OpenAI(base_url=gw.v1, api_key=GATEWAY_KEY, max_retries=0)
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="my-chat", messages=MESSAGES, max_tokens=5)
        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_auth_failed"
