"""The gateway's OpenAPI schema as the gateway behaves: the POST endpoints (served outside
FastAPI's routing), what each route answers, and OpenAI-shaped 400s instead of FastAPI's 422."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from openai_wire import openapi as wire

READY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["ready", "store", "upstream", "closing"],
    "properties": {k: {"type": "boolean"} for k in ("ready", "store", "upstream", "closing")},
}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["service", "store", "limits", "totals", "queue"],
    "properties": {
        "service": {"const": "apim"},
        "store": {"enum": ["embedded", "redis"]},
        "limits": {"type": "object"},
        "totals": {"type": "object"},
        "queue": {
            "type": "object",
            "required": ["depth", "in_flight", "oldest_wait_s"],
            "properties": {
                "depth": {"type": "integer", "minimum": 0},
                "in_flight": {"type": "integer", "minimum": 0},
                "oldest_wait_s": {"type": "number", "minimum": 0},
            },
        },
    },
}
PRIORITY = {
    "name": "x-apim-priority",
    "in": "header",
    "required": False,
    "description": "Queue class of this request: high, normal or low, any case (absent or empty = normal).",
    "schema": {"type": "string", "pattern": "^(?:[Hh][Ii][Gg][Hh]|[Nn][Oo][Rr][Mm][Aa][Ll]|[Ll][Oo][Ww])?$"},
}


def _responses(keys: bool) -> dict[tuple[str, str], dict[str, Any]]:
    unauthorized = (
        {"401": wire.error_response("Missing or unknown gateway key (APIM_API_KEYS).")} if keys else {}
    )
    return {
        ("/v1/models", "get"): {
            "200": wire.json_response(
                "The upstream's model list.", {"$ref": "#/components/schemas/ModelList"}
            ),
            **unauthorized,
            "502": wire.error_response("The upstream could not be reached."),
        },
        ("/v1/models/{model_id}", "get"): {
            "200": wire.json_response("One model.", {"$ref": "#/components/schemas/Model"}),
            "404": wire.error_response("No deployment serves the model (`model_not_found`)."),
            **unauthorized,
            "502": wire.error_response("The upstream could not be reached."),
        },
        ("/status", "get"): {"200": wire.json_response("Budget, counters and queue.", STATUS_SCHEMA)},
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
            "200": wire.json_response("Store and upstream reachable.", READY_SCHEMA),
            "503": {
                "description": "Not ready: the store or the upstream is unreachable, or shutting down.",
                "headers": wire.RETRY_HEADERS,
                "content": {"application/json": {"schema": READY_SCHEMA}},
            },
        },
    }


def _errors(keys: bool) -> dict[int, str]:
    errors = {
        400: "Invalid body, content type or header.",
        404: "The upstream does not know the model (passed through).",
        413: "The body exceeds APIM_MAX_BODY_BYTES.",
        429: "The queue is full, or the request can never fit a limit (`Request too large`).",
        500: "The upstream's error after the retries (passed through).",
        502: "The upstream could not be reached, or refused the gateway's credentials.",
        503: "The gateway is shutting down, or the upstream's error after the retries.",
        504: "The request waited APIM_QUEUE_TIMEOUT_S without fitting the budget, or the upstream "
        "did not answer in time.",
    }
    if keys:
        errors[401] = "Missing or unknown gateway key (APIM_API_KEYS)."
    return errors


QUEUED = (
    "Queued until the upstream's budget allows, then forwarded; the answer is the upstream's "
    "(status, body, rate-limit headers) or a gateway error. Azure OpenAI's paths "
    "(`/openai/deployments/{deployment}/...?api-version=`, `/openai/v1/...`) are served too."
)


def _posts(keys: bool) -> dict[str, Any]:
    errors = _errors(keys)
    paths = {
        "/v1/chat/completions": {
            "post": wire.chat_operation(errors, [PRIORITY], f"OpenAI's chat completions. {QUEUED}")
        }
    }
    for path, summary, operation_id, request, answer, described, streams in wire.POST_OPERATIONS:
        operation = wire.post_operation(
            summary, operation_id, request, answer, described, errors, [PRIORITY], QUEUED, streams
        )
        paths[path] = {"post": operation}
    return paths


def install(api: FastAPI, keys: bool) -> None:
    """Make ``api.openapi()`` (and ``/openapi.json``) return the truthful schema."""

    def schema() -> dict[str, Any]:
        if api.openapi_schema is None:
            built = get_openapi(title=api.title, version=api.version, routes=api.routes)
            for (path, method), responses in _responses(keys).items():
                operation = built["paths"].get(path, {}).get(method)
                if operation is not None:
                    operation["responses"] = responses
            built["paths"].update(_posts(keys))
            built.setdefault("components", {}).setdefault("schemas", {}).update(wire.components())
            api.openapi_schema = wire.openai_errors(built)
        return api.openapi_schema

    api.openapi = schema  # type: ignore[method-assign]
