"""Schemathesis against the mock's own OpenAPI schema: no 5xx, no answer outside the schema.

The schema is built in-process from the same settings as the running mock (and checked equal
to what it serves); every generated request goes to the real process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from llm_mock_server.app import create_app
from llm_mock_server.config import MockSettings
from tests.processes import Service, running

ENV = {
    "MOCK_RPM_LIMIT": "0",
    "MOCK_TPM_LIMIT": "0",
    "MOCK_RPD_LIMIT": "0",
    "MOCK_TPD_LIMIT": "0",
    "MOCK_REDIS_URL": "",
    "MOCK_LOG_REQUESTS": "false",
    "MOCK_MAX_BODY_BYTES": "65536",
}
SETTINGS = MockSettings(**{k.removeprefix("MOCK_").lower(): v for k, v in ENV.items()})
OPENAPI = create_app(SETTINGS).api.openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)
# Enough examples to reach every branch of a small API; the module stays well under a minute.
EXAMPLES = 60
# The same examples on every run, so the suite cannot fail by chance; SCHEMA_FUZZ_RANDOM=1 explores.
DERANDOMIZE = os.environ.get("SCHEMA_FUZZ_RANDOM") != "1"


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Random model names are all 404s: name a served model in most cases so the rest of the
    body is exercised too."""
    # Only a valid model name is replaced: an empty or non-string one is a negative case's point.
    if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
        # Each endpoint's own models: an embedding model on chat is a (declared) 400.
        embeds = context.operation.path == "/v1/embeddings"
        # text-embedding-3-large takes every `dimensions` the schema allows (ada-002 takes none).
        served = ["text-embedding-3-large"] if embeds else SETTINGS.models[:2]
        return st.sampled_from([body["model"], *served]).map(lambda m: {**body, "model": m})
    return st.just(body)


@pytest.fixture(scope="module")
def mock_service() -> Iterator[Service]:
    with running("llm_mock_server", env=ENV) as service:
        yield service


def test_the_served_schema_is_the_one_fuzzed(mock_service: Service) -> None:
    assert httpx.get(f"{mock_service.url}/openapi.json").json() == OPENAPI
    chat = OPENAPI["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ChatCompletionRequest"
    )
    assert {"200", "400", "404", "413", "429"} <= set(chat["responses"])
    assert all("422" not in op["responses"] for path in OPENAPI["paths"].values() for op in path.values())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_mock_answers_within_its_schema(case: schemathesis.Case, mock_service: Service) -> None:
    case.call_and_validate(base_url=mock_service.url, timeout=10)
