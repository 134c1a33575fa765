"""The mock's OpenAPI schema as the mock actually behaves: the chat endpoint (served outside
FastAPI's routing), every answer's body, and OpenAI-shaped 400s instead of FastAPI's 422."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from llm_mock_server.config import MockSettings
from llm_mock_server.faults import FAULT_HEADER, Fault
from openai_wire import openapi as wire

LIMITS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": {
        "type": "object",
        "required": ["limit", "used", "remaining", "reset_s"],
        "properties": {
            "limit": {"type": "integer"},
            "used": {"type": "integer"},
            "remaining": {"type": "integer"},
            "reset_s": {"type": "number"},
        },
    },
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["service", "store", "limits", "totals"],
    "properties": {
        "service": {"const": "llm-mock"},
        "store": {"enum": ["embedded", "redis"]},
        "api_key": {"type": "string"},
        "limits": LIMITS_SCHEMA,
        "totals": {
            "type": "object",
            "required": ["requests", "rate_limited", "errors"],
            "properties": {k: {"type": "integer"} for k in ("requests", "ok", "rate_limited", "errors")},
        },
    },
}
API_KEY_QUERY = {
    "name": "api_key",
    "in": "query",
    "required": False,
    "description": "Whose budget to show (default: the first configured key, or the shared one).",
    "schema": {"type": "string"},
}


def _responses(settings: MockSettings) -> dict[tuple[str, str], dict[str, Any]]:
    """What each FastAPI route answers, by (path, method)."""
    unauthorized = {"401": wire.error_response("Missing or unknown API key.")} if settings.api_keys else {}
    unavailable = {"503": wire.error_response("The limiter store is unreachable.")}
    return {
        ("/v1/models", "get"): {
            "200": wire.json_response("The served models.", {"$ref": "#/components/schemas/ModelList"}),
            **unauthorized,
        },
        ("/v1/models/{model}", "get"): {
            "200": wire.json_response("One model.", {"$ref": "#/components/schemas/Model"}),
            "404": wire.error_response("Unknown model (`model_not_found`)."),
            **unauthorized,
        },
        ("/status", "get"): {
            "200": wire.json_response("Limits, usage and counters of one key's budget.", STATUS_SCHEMA),
            **unavailable,
        },
        ("/metrics", "get"): {
            "200": {
                "description": "Prometheus text exposition.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        ("/healthz", "get"): {
            "200": wire.json_response(
                "The process is alive.",
                {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
            )
        },
        ("/readyz", "get"): {
            "200": wire.json_response(
                "The limiter store answers.",
                {
                    "type": "object",
                    "required": ["status", "store"],
                    "properties": {"status": {"const": "ready"}},
                },
            ),
            **unavailable,
        },
        ("/admin/reset", "post"): {
            "200": wire.json_response(
                "The keys whose limiter state was cleared.",
                {
                    "type": "object",
                    "required": ["reset"],
                    "properties": {"reset": {"type": "array", "items": {"type": "string"}}},
                },
            ),
            **unauthorized,
            **unavailable,
        },
    }


def _errors(settings: MockSettings) -> dict[int, str]:
    errors = {
        400: "Invalid body, content type or header.",
        404: "Unknown model (`model_not_found`).",
        413: "The body exceeds MOCK_MAX_BODY_BYTES.",
        429: "A rate limit is exhausted, or the request can never fit one (`Request too large`).",
        500: "Injected fault.",
        503: "Injected fault, or the limiter store is unreachable.",
    }
    if settings.api_keys:
        errors[401] = "Missing or unknown API key."
    return errors


def _fault_parameters(settings: MockSettings) -> list[dict[str, Any]]:
    parameters = []
    if settings.admin:
        parameters.append(
            {
                "name": FAULT_HEADER,
                "in": "header",
                "required": False,
                "description": "Force a fault for this request (MOCK_ADMIN only); `drop` closes the "
                "connection without an answer.",
                "schema": {"enum": [f.value for f in Fault]},
            }
        )
    return parameters


LIMITS_NOTE = (
    "Limits are checked and consumed at admission, before the answer exists; failed requests count, "
    "as at OpenAI."
)


def _posts(settings: MockSettings) -> dict[str, Any]:
    errors, parameters = _errors(settings), _fault_parameters(settings)
    paths = {
        "/v1/chat/completions": {
            "post": wire.chat_operation(errors, parameters, f"OpenAI's chat completions. {LIMITS_NOTE}")
        }
    }
    for path, summary, operation_id, request, answer, described, streams in wire.POST_OPERATIONS:
        operation = wire.post_operation(
            summary, operation_id, request, answer, described, errors, parameters, LIMITS_NOTE, streams
        )
        paths[path] = {"post": operation}
    return paths


def install(api: FastAPI, settings: MockSettings) -> None:
    """Make ``api.openapi()`` (and ``/openapi.json``) return the truthful schema."""

    def schema() -> dict[str, Any]:
        if api.openapi_schema is None:
            built = get_openapi(title=api.title, version=api.version, routes=api.routes)
            for (path, method), responses in _responses(settings).items():
                operation = built["paths"].get(path, {}).get(method)
                if operation is not None:
                    operation["responses"] = responses
            for path, method in (("/status", "get"), ("/admin/reset", "post")):
                operation = built["paths"].get(path, {}).get(method)
                if operation is not None:
                    operation["parameters"] = [API_KEY_QUERY]
            built["paths"].update(_posts(settings))
            schemas = built.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(wire.components())
            # The mock keeps no state: any previous_response_id is a 400 (see responses.py).
            schemas["ResponsesRequest"]["properties"]["previous_response_id"] = {
                "type": "null",
                "description": "Not supported: the mock keeps no responses (any id is a 400).",
            }
            api.openapi_schema = wire.openai_errors(built)
        return api.openapi_schema

    api.openapi = schema  # type: ignore[method-assign]
