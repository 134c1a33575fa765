"""The gateway's endpoints beyond chat (embeddings, Responses API, legacy completions, one
model), as the official openai SDK sees them through real mock and gateway processes: every
answer parsed by the SDK's own types, every one through the queue with the gateway's headers,
and every one charged to the budget as the mock charges it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from tests.processes import Service, running
from tests.test_apim_e2e import MESSAGES, MODEL, client, gateway_env, mock, mock_and_gateway

EMBEDDING = "text-embedding-3-small"
TPM = 1_000_000
RESPONSE_EVENTS = [
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseContentPartAddedEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
    ResponseContentPartDoneEvent,
    ResponseOutputItemDoneEvent,
    ResponseCompletedEvent,
]


@pytest.fixture(scope="module")
def services() -> Iterator[tuple[Service, Service]]:
    limits = {"TPM_LIMIT": str(TPM), "RPM_LIMIT": "1000"}
    with mock_and_gateway(limits, **limits) as both:
        yield both


@pytest.fixture
def sdk(services: tuple[Service, Service]) -> openai.OpenAI:
    upstream, gw = services
    # Both budgets start empty, so what each has used can be compared.
    httpx.post(f"{upstream.url}/admin/reset", timeout=5).raise_for_status()
    return client(gw)


def _tpm_used(service: Service) -> int:
    return int(service.status()["limits"]["tpm"]["used"])


def _rpm_used(service: Service) -> int:
    return int(service.status()["limits"]["rpm"]["used"])


def _queued(raw: object) -> None:
    """The gateway's own headers on an answer: it went through the queue."""
    headers = raw.headers  # type: ignore[attr-defined]
    assert headers["x-apim-queue-ms"].isdigit()
    assert headers["x-request-id"]
    assert "x-ratelimit-remaining-tokens" in headers


def test_embeddings_through_the_gateway(sdk: openai.OpenAI) -> None:
    raw = sdk.embeddings.with_raw_response.create(
        model=EMBEDDING, input=["one", "two words"], encoding_format="float"
    )
    _queued(raw)
    reply = CreateEmbeddingResponse.model_validate_json(raw.content)
    assert len(reply.data) == 2
    assert reply.usage.prompt_tokens > 0
    # The SDK's default (base64) decoded by the SDK: the gateway passed the bytes through intact.
    encoded = sdk.embeddings.with_raw_response.create(model=EMBEDDING, input=["one", "two words"])
    assert isinstance(encoded.http_response.json()["data"][0]["embedding"], str)
    assert encoded.parse().data[0].embedding == pytest.approx(reply.data[0].embedding, rel=1e-6)
    tokens = sdk.embeddings.create(model=EMBEDDING, input=[[1, 2, 3]], encoding_format="float")
    assert tokens.usage.prompt_tokens == 3


def test_responses_plain_and_streaming(sdk: openai.OpenAI) -> None:
    raw = sdk.responses.with_raw_response.create(model=MODEL, input="Say hi.", max_output_tokens=20)
    _queued(raw)
    reply = Response.model_validate_json(raw.content)
    assert reply.output_text
    assert reply.usage is not None and reply.usage.output_tokens <= 20
    events = list(sdk.responses.create(model=MODEL, input="Say hi.", max_output_tokens=500, stream=True))
    kinds = [type(e) for e in events]
    # OpenAI's sequence, deltas repeating, each event parsed by the SDK as its own type.
    assert [k for i, k in enumerate(kinds) if i == 0 or k is not kinds[i - 1]] == RESPONSE_EVENTS
    final = events[-1]
    assert isinstance(final, ResponseCompletedEvent)
    assert final.response.usage is not None and final.response.usage.input_tokens > 0
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == final.response.output_text


def test_legacy_completions_plain_and_streaming(sdk: openai.OpenAI) -> None:
    raw = sdk.completions.with_raw_response.create(model=MODEL, prompt="Once upon", max_tokens=8)
    _queued(raw)
    reply = Completion.model_validate_json(raw.content)
    assert reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 8
    chunks = list(sdk.completions.create(model=MODEL, prompt="Once upon", max_tokens=8, stream=True))
    assert all(isinstance(c, Completion) for c in chunks)
    # The caller did not ask for the usage: the chunk the gateway asked for is stripped again.
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    with_usage = list(
        sdk.completions.create(
            model=MODEL,
            prompt="Once upon",
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0


def test_every_endpoint_is_charged_as_the_mock_charges_it(
    services: tuple[Service, Service], sdk: openai.OpenAI
) -> None:
    """Chat, embeddings, responses and completions share one budget; after each, the gateway's
    budget holds what the mock's does (estimate at admission, the excess of usage settled)."""
    upstream, gw = services
    start_gw, start_mock = _tpm_used(gw), _tpm_used(upstream)
    assert start_mock == 0
    calls = [
        lambda: sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12),
        lambda: sdk.embeddings.create(model=EMBEDDING, input=["a b c d e f g", "h i j"]),
        lambda: sdk.responses.create(model=MODEL, input="Count to three.", max_output_tokens=16),
        lambda: list(sdk.responses.create(model=MODEL, input="Count.", max_output_tokens=16, stream=True)),
        lambda: sdk.completions.create(model=MODEL, prompt=["one", "two"], max_tokens=5, n=2),
        lambda: list(sdk.completions.create(model=MODEL, prompt="Stream", max_tokens=7, stream=True)),
    ]
    for call in calls:
        before = _tpm_used(upstream)
        call()
        assert _tpm_used(upstream) > before
        assert _tpm_used(gw) - start_gw == _tpm_used(upstream)
    assert _rpm_used(upstream) == len(calls)


def test_models_retrieve_passes_the_upstreams_answer(sdk: openai.OpenAI) -> None:
    model = sdk.models.retrieve(MODEL)
    assert isinstance(model, Model) and model.id == MODEL
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_bad_bodies_are_openai_400s_before_the_queue(
    services: tuple[Service, Service], sdk: openai.OpenAI
) -> None:
    upstream, _ = services
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.embeddings.create(model=EMBEDDING, input=[])
    assert caught.value.param == "input"
    with pytest.raises(openai.BadRequestError):
        sdk.responses.create(model=MODEL, input="x", max_output_tokens=3)
    with pytest.raises(openai.BadRequestError):
        sdk.completions.create(model=MODEL, prompt=[], max_tokens=3)
    assert _rpm_used(upstream) == 0
    # Other methods on the POST paths are 405s in OpenAI's shape.
    gw = services[1]
    answer = httpx.get(f"{gw.v1}/embeddings", timeout=5)
    assert answer.status_code == 405
    assert answer.json()["error"]["message"]


def test_with_a_file_only_configured_models_exist(tmp_path: Path) -> None:
    config = tmp_path / "apim.yaml"
    with mock() as upstream:
        config.write_text(
            "deployments:\n"
            f"  - name: local\n    url: {upstream.v1}\n"
            f"    models:\n      {MODEL}: {{tpm: 100000}}\n      {EMBEDDING}: {{tpm: 100000}}\n"
        )
        with running("apim_server", env=gateway_env(upstream.v1, CONFIG=str(config))) as gw:
            sdk = client(gw)
            assert sdk.models.retrieve(EMBEDDING).id == EMBEDDING
            with pytest.raises(openai.NotFoundError) as caught:
                sdk.models.retrieve("gpt-4o")
            assert caught.value.code == "model_not_found"
            with pytest.raises(openai.NotFoundError):
                sdk.embeddings.create(model="text-embedding-3-large", input="x")
            assert sdk.embeddings.create(model=EMBEDDING, input="x").usage.prompt_tokens == 1
            reply = sdk.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
            assert isinstance(reply, ChatCompletion)
            budgets = {b["model"]: b["limits"]["tpm"]["used"] for b in gw.status()["budgets"]}
            assert budgets[EMBEDDING] == 1
            assert budgets[MODEL] > 0
