"""OpenAPI pieces both services document: the chat completions operation, OpenAI's error body,
the rate-limit headers, and a pass that replaces FastAPI's 422 with the 400 actually sent.

The chat endpoint is served outside FastAPI's routing in both services, so FastAPI cannot
describe it; each service's schema adds it from here.
"""

from __future__ import annotations

import copy
from typing import Any

from openai_wire.schemas import ChatCompletionRequest

REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": "#/components/schemas/Error"}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

USAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer", "minimum": 0},
        "completion_tokens": {"type": "integer", "minimum": 0},
        "total_tokens": {"type": "integer", "minimum": 0},
    },
}

CHAT_COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "message": {
                        "type": "object",
                        "required": ["role"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": ["string", "null"]},
                        },
                    },
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
        },
        "usage": {"anyOf": [{"$ref": "#/components/schemas/Usage"}, {"type": "null"}]},
    },
}

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": {"type": "string"},
    },
}

MODEL_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}},
    },
}

_INT = {"schema": {"type": "string", "pattern": r"^\d+$"}}
_DURATION = {"schema": {"type": "string"}}
_KINDS = ("requests", "tokens")
RATELIMIT_HEADERS: dict[str, Any] = {
    **{f"x-ratelimit-limit-{kind}": {**_INT, "description": f"The limit on {kind}."} for kind in _KINDS},
    **{f"x-ratelimit-remaining-{kind}": {**_INT, "description": f"{kind} left."} for kind in _KINDS},
    **{
        f"x-ratelimit-reset-{kind}": {**_DURATION, "description": f"Until {kind} are back (`6m0s`)."}
        for kind in _KINDS
    },
}
RETRY_HEADERS: dict[str, Any] = {
    "retry-after": {**_INT, "description": "Seconds to wait before retrying."},
    "retry-after-ms": {**_INT, "description": "Milliseconds to wait before retrying."},
}


def error_response(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response whose body is OpenAI's error object."""
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}
    if headers:
        out["headers"] = headers
    return out


def json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def request_schemas() -> dict[str, Any]:
    """The request body's schema and its parts, for ``components.schemas``."""
    schema = ChatCompletionRequest.model_json_schema(ref_template=REF)
    defs = schema.pop("$defs", {})
    return {"ChatCompletionRequest": schema, **defs}


def chat_operation(
    errors: dict[int, str],
    parameters: list[dict[str, Any]] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """``POST /v1/chat/completions``: the request body, the answer (JSON or SSE) and ``errors``
    (status -> description), each in OpenAI's error shape."""
    responses: dict[str, Any] = {
        "200": {
            "description": "The completion, or with `stream: true` a server-sent event stream of "
            "`chat.completion.chunk` objects ending in `data: [DONE]`.",
            "headers": copy.deepcopy(RATELIMIT_HEADERS),
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
                # One server-sent event: `data` holds a chunk's JSON, then the final `[DONE]`.
                "text/event-stream": {
                    "schema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
                    }
                },
            },
        }
    }
    for status, text in sorted(errors.items()):
        headers = RETRY_HEADERS if status in (429, 503) else None
        responses[str(status)] = error_response(text, headers)
    operation: dict[str, Any] = {
        "summary": "Create a chat completion",
        "operationId": "create_chat_completion",
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
            },
        },
        "responses": responses,
    }
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    return operation


def components() -> dict[str, Any]:
    """The schemas the operations here refer to."""
    return {
        "Error": ERROR_SCHEMA,
        "Usage": USAGE_SCHEMA,
        "ChatCompletion": CHAT_COMPLETION_SCHEMA,
        "Model": MODEL_SCHEMA,
        "ModelList": MODEL_LIST_SCHEMA,
        **request_schemas(),
    }


def openai_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace FastAPI's 422 validation answer (never sent) with the 400 error that is, and drop
    its now unused schemas."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if responses.pop("422", None) is not None:
                responses.setdefault("400", error_response("Invalid parameters."))
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    return schema
