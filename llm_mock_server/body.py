"""Reading a request body: size limit, content type, JSON, schema."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from openai_wire.errors import APIError
from openai_wire.schemas import ChatCompletionRequest

TOO_DEEP = "The JSON body of your request is nested too deeply."


def too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"Request body too large: the limit is {limit} bytes.",
        type="invalid_request_error",
        code="request_too_large",
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 past ``limit`` bytes without reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, "Invalid Content-Length header.", code="invalid_request") from None
        if size > limit:
            raise too_large(limit)
    # Straight from the ASGI channel: Starlette's request.body() costs more than reading it.
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def parse(
    raw: bytes, schema: type[BaseModel] = ChatCompletionRequest, model: str | None = None
) -> tuple[dict[str, Any], Any]:
    """The body as a dict (what cost and token counting read) and as the validated ``schema``.

    ``model`` replaces the body's own (an Azure deployment path names the model: Azure ignores
    the body's). Errors are raised as FastAPI's ``RequestValidationError`` so the app's one handler
    renders them in OpenAI's shape.
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
        ) from None
    except RecursionError:
        # The C decoder recurses once per level: a small body of brackets reaches the limit.
        raise APIError(400, TOO_DEEP, code="invalid_request") from None
    if not isinstance(data, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_request")
    if model is not None:
        data["model"] = model
    try:
        request = schema.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e.get("loc", ()))} for e in exc.errors()]
        raise RequestValidationError(errors) from None
    return data, request
