"""Schemathesis against the gateway's own OpenAPI schema, the gateway in front of a real mock:
no 5xx of its own, no answer outside the schema.

The schema is built in-process from the same settings as the running gateway (and checked equal
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

from apim_server.app import create_app
from apim_server.config import Settings
from tests.processes import Service
from tests.test_apim_e2e import UNLIMITED, mock_and_gateway

EXAMPLES = 60
DERANDOMIZE = os.environ.get("SCHEMA_FUZZ_RANDOM") != "1"
SETTINGS = {**UNLIMITED, "MAX_BODY_BYTES": "65536"}
MODELS = ["gpt-4o-mini", "gpt-4o"]
# text-embedding-3-large takes every `dimensions` the schema allows (ada-002 takes none).
EMBEDDING_MODELS = ["text-embedding-3-large"]

OPENAPI = create_app(Settings(**{k.lower(): v for k, v in SETTINGS.items()})).api.openapi()
schema = schemathesis.openapi.from_dict(OPENAPI)


@schema.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> st.SearchStrategy[Any]:
    """Random model names are all the upstream's 404s: name a served model in most cases."""
    if isinstance(body, dict) and context.operation.path == "/v1/responses":
        # The mock keeps no responses, so it refuses any id (its own schema says so): that 400 is
        # the upstream's, not the gateway's.
        body = {k: v for k, v in body.items() if k != "previous_response_id"}
    # Only a valid model name is replaced: an empty or non-string one is a negative case's point.
    if isinstance(body, dict) and isinstance(body.get("model"), str) and body["model"]:
        # Each endpoint's own models: an embedding model on chat is the upstream's 400.
        served = EMBEDDING_MODELS if context.operation.path == "/v1/embeddings" else MODELS
        return st.sampled_from([body["model"], *served]).map(lambda m, b=body: {**b, "model": m})
    return st.just(body)


@pytest.fixture(scope="module")
def gateway_service() -> Iterator[Service]:
    with mock_and_gateway({}, **SETTINGS) as (_upstream, service):
        yield service


def test_the_served_schema_is_the_one_fuzzed(gateway_service: Service) -> None:
    served = httpx.get(f"{gateway_service.url}/openapi.json").json()
    assert served == OPENAPI
    chat = OPENAPI["paths"]["/v1/chat/completions"]["post"]
    assert {"200", "400", "413", "429", "502", "503", "504"} <= set(chat["responses"])
    assert all("422" not in op["responses"] for path in OPENAPI["paths"].values() for op in path.values())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, derandomize=DERANDOMIZE, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_gateway_answers_within_its_schema(case: schemathesis.Case, gateway_service: Service) -> None:
    case.call_and_validate(base_url=gateway_service.url, timeout=30)
