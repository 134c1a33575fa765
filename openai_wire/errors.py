"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.

``install`` makes a FastAPI app answer every error this way, validation errors included
(400, as OpenAI does, instead of FastAPI's 422).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "requests",
    503: "server_error",
    504: "timeout",
}


ECHO_CAP = 256
"""Characters of a caller's value an error message repeats (a 1 MB model name is not echoed)."""


def clip(value: str, cap: int = ECHO_CAP) -> str:
    """``value`` as an error message may repeat it: at most ``cap`` characters."""
    return value if len(value) <= cap else f"{value[:cap]}...({len(value)} chars)"


LIMIT_WORDS = {
    "requests/minute": "requests per min (RPM)",
    "tokens/minute": "tokens per min (TPM)",
    "requests/day": "requests per day (RPD)",
    "tokens/day": "tokens per day (TPD)",
}
"""How OpenAI's 429 messages name each limit (the error's ``type`` is the part before ``/``)."""


class APIError(Exception):
    """An error answer: raise it anywhere in a route and the handler renders it."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, dict[str, str | None]]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "json_invalid":
        return (
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
            "using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            None,
        )
    if first.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
    return f"Invalid value for '{param}': {message}.", param


def install(app: FastAPI) -> None:
    """Register the handlers that put every error into OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return APIError(400, message, param=param, code="invalid_request").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404:
            message = "Unknown request URL. Please check the URL for typos."
        return APIError(exc.status_code, message, code=None, headers=exc.headers).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return APIError(500, "The server had an error while processing your request.").response()
