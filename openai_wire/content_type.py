"""The one content type a chat request may declare."""

from __future__ import annotations

from starlette.requests import Request

from openai_wire.errors import APIError


def check_content_type(request: Request) -> None:
    """JSON, or nothing said: a form or text body is a caller's mistake worth naming."""
    ctype = request.headers.get("content-type")
    if ctype is None:
        return
    mime = ctype.split(";", 1)[0].strip().lower()
    if mime != "application/json" and not mime.endswith("+json"):
        raise APIError(
            400,
            f"Invalid Content-Type header ({mime or 'empty'}): the request body must be JSON "
            "(Content-Type: application/json).",
            code="invalid_request",
        )
