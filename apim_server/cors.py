"""CORS for browser callers (``APIM_CORS_ORIGINS``): preflights answered, our headers exposed.

Starlette's middleware does the work; a request without an ``Origin`` header (every server-side
client) costs one header lookup. A refused preflight is a 400 in OpenAI's error shape, like
every other error of the gateway.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp

from openai_wire.errors import APIError

EXPOSED = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-apim-queue-ms",
    "x-apim-expected-wait-ms",
    "x-should-retry",
    "retry-after",
    "retry-after-ms",
    "x-request-id",
    "x-upstream-request-id",
    "openai-processing-ms",
)
"""Response headers a browser script may read: without this list it sees none of them."""
PREFLIGHT_MAX_AGE_S = 600


class GatewayCORS(CORSMiddleware):
    """Starlette's CORS with the gateway's settings and error shape."""

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        super().__init__(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            # The SDKs send their own headers (x-stainless-*, openai-beta) besides ours
            # (x-apim-priority, x-apim-timeout-ms): the preflight allows what it is asked for.
            allow_headers=["*"],
            expose_headers=list(EXPOSED),
            max_age=PREFLIGHT_MAX_AGE_S,
        )

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        reason = bytes(response.body).decode() or "Disallowed CORS request"
        return APIError(400, f"{reason}.", code="cors_refused").response()
