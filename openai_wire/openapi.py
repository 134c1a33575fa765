"""OpenAPI pieces both services document: the POST operations (chat, embeddings, responses,
legacy completions), OpenAI's error body, the rate-limit headers, and a pass that replaces
FastAPI's 422 with the 400 actually sent.

The POST endpoints are served outside FastAPI's routing in both services, so FastAPI cannot
describe them; each service's schema adds them from here.
"""

from __future__ import annotations

import copy
from typing import Any

from openai_wire.completions import CompletionRequest
from openai_wire.embeddings import EmbeddingRequest
from openai_wire.responses import ResponsesRequest
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

EMBEDDING_LIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"const": "embedding"},
                    "index": {"type": "integer", "minimum": 0},
                    # A list of floats, or with encoding_format base64 their float32 bytes.
                    "embedding": {
                        "anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}]
                    },
                },
            },
        },
        "model": {"type": "string"},
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer", "minimum": 0},
                "total_tokens": {"type": "integer", "minimum": 0},
            },
        },
    },
}

RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created_at", "status", "model", "output"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "response"},
        "created_at": {"type": "number"},
        "status": {"enum": ["completed", "incomplete", "in_progress", "failed"]},
        "model": {"type": "string"},
        "output": {"type": "array", "items": {"type": "object"}},
        "usage": {
            "anyOf": [
                {
                    "type": "object",
                    "required": ["input_tokens", "output_tokens", "total_tokens"],
                    "properties": {
                        "input_tokens": {"type": "integer", "minimum": 0},
                        "output_tokens": {"type": "integer", "minimum": 0},
                        "total_tokens": {"type": "integer", "minimum": 0},
                    },
                },
                {"type": "null"},
            ]
        },
    },
}

TEXT_COMPLETION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["text", "index", "finish_reason"],
                "properties": {
                    "text": {"type": "string"},
                    "index": {"type": "integer", "minimum": 0},
                    "finish_reason": {"type": ["string", "null"]},
                },
            },
        },
        "usage": {"anyOf": [{"$ref": "#/components/schemas/Usage"}, {"type": "null"}]},
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


# (path, summary, operation id, request, answer, answer description, streams)
POST_OPERATIONS = (
    (
        "/v1/embeddings",
        "Create embeddings",
        "create_embedding",
        "EmbeddingRequest",
        "EmbeddingList",
        "One vector per input (floats, or base64 with `encoding_format: base64`).",
        False,
    ),
    (
        "/v1/responses",
        "Create a response",
        "create_response",
        "ResponsesRequest",
        "Response",
        "The response, or with `stream: true` its events (`response.created` ... `response.completed`).",
        True,
    ),
    (
        "/v1/completions",
        "Create a completion (legacy)",
        "create_completion",
        "CompletionRequest",
        "TextCompletion",
        "The completion, or with `stream: true` `text_completion` chunks ending in `data: [DONE]`.",
        True,
    ),
)


REQUESTS = (ChatCompletionRequest, EmbeddingRequest, ResponsesRequest, CompletionRequest)


def request_schemas() -> dict[str, Any]:
    """The request bodies' schemas and their parts, for ``components.schemas``."""
    out: dict[str, Any] = {}
    for model in REQUESTS:
        schema = model.model_json_schema(ref_template=REF)
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def chat_operation(
    errors: dict[int, str],
    parameters: list[dict[str, Any]] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """``POST /v1/chat/completions``: the request body, the answer (JSON or SSE) and ``errors``
    (status -> description), each in OpenAI's error shape."""
    return post_operation(
        "Create a chat completion",
        "create_chat_completion",
        "ChatCompletionRequest",
        "ChatCompletion",
        "The completion, or with `stream: true` a server-sent event stream of `chat.completion.chunk` "
        "objects ending in `data: [DONE]`.",
        errors,
        parameters,
        description,
    )


def post_operation(
    summary: str,
    operation_id: str,
    request: str,
    answer: str,
    answer_description: str,
    errors: dict[int, str],
    parameters: list[dict[str, Any]] | None = None,
    description: str = "",
    streams: bool = True,
) -> dict[str, Any]:
    """A POST operation of the OpenAI API: the ``request`` and ``answer`` schemas (by component
    name), an event stream if it ``streams``, and ``errors`` (status -> description) in OpenAI's
    error shape."""
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{answer}"}}}
    if streams:
        # One server-sent event: `data` holds an event's JSON (chat and completions end in `[DONE]`).
        content["text/event-stream"] = {
            "schema": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
            }
        }
    responses: dict[str, Any] = {
        "200": {
            "description": answer_description,
            "headers": copy.deepcopy(RATELIMIT_HEADERS),
            "content": content,
        }
    }
    for status, text in sorted(errors.items()):
        headers = RETRY_HEADERS if status in (429, 503) else None
        responses[str(status)] = error_response(text, headers)
    operation: dict[str, Any] = {
        "summary": summary,
        "operationId": operation_id,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}},
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
        "EmbeddingList": EMBEDDING_LIST_SCHEMA,
        "Response": RESPONSE_SCHEMA,
        "TextCompletion": TEXT_COMPLETION_SCHEMA,
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
