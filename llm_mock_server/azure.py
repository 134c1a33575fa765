"""Azure OpenAI's side of the mock: its paths (``openai_wire.azure``) mapped onto the ``/v1``
ones, and with ``MOCK_FLAVOR=azure`` its answers.

The flavor's 429 body and headers follow what Azure OpenAI sends. Its message, word for word
as Azure answers and Microsoft's Q&A quotes it: "Requests to the ChatCompletions_Create
Operation under Azure OpenAI API version 2024-04-01-preview have exceeded token rate limit of
your current OpenAI S0 pricing tier. Please retry after 86400 seconds. Please go here:
https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
(https://learn.microsoft.com/en-gb/answers/questions/1696619/exceeded-token-rate-limit-for-first-(short)-prompt),
"Please retry after 1 second." in the singular, in a body ``{"error": {"code": "429", "message"}}``;
"have exceeded call rate limit" when requests run out, with Embeddings_Create for embeddings
(https://github.com/microsoft/PubSec-Info-Assistant/issues/479). ``Responses_Create`` is our
name by the same pattern: no quoted message for the Responses API was found.
RPM is enforced over 1 s or 10 s intervals at the pro-rated rate
(https://learn.microsoft.com/azure/ai-services/openai/how-to/quota, "Understanding rate limits").
"""

from __future__ import annotations

import math

from starlette.types import Scope

from openai_wire import azure as wire
from openai_wire.errors import APIError
from ratelimit.limits import Decision, LimitState

DEPLOYMENT_KEY = "llm_mock.deployment"
API_VERSION_KEY = "llm_mock.api_version"
DEFAULT_API_VERSION = "2024-10-21"
"""What a 429 message names when the request did not say (a plain /v1 path)."""
DEFAULT_SHORT_WINDOW_S = 10
QUOTA_URL = "https://aka.ms/oai/quotaincrease"


class AzureError(APIError):
    """An error in Azure's shape: ``{"error": {"code", "message"}}``, the code a string."""

    def body(self) -> dict[str, dict[str, str | None]]:  # type: ignore[override]
        return {"error": {"code": self.code, "message": self.message}}


def route(scope: Scope) -> None:
    """Rewrite an Azure path in ``scope`` to the ``/v1`` path it stands for, noting the
    deployment and api-version; other paths are left alone, and so is one Azure would not
    serve (a deployment path without api-version): it is a 404."""
    found = wire.route(scope["path"], scope.get("query_string", b""))
    if found is None:
        return
    scope["path"] = found.path
    scope["raw_path"] = found.path.encode()
    scope[API_VERSION_KEY] = found.api_version
    if found.deployment is not None:
        scope[DEPLOYMENT_KEY] = found.deployment


def access_denied(_: str | None = None) -> AzureError:
    """Azure's 401 for a missing or wrong ``api-key``, in its words as users quote it (e.g.
    https://github.com/openai/openai-python/issues/3282)."""
    return AzureError(
        401,
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid "
        "key for an active subscription and use a correct regional API endpoint for your resource.",
        code="401",
    )


def deployment_not_found() -> AzureError:
    return AzureError(
        404,
        "The API deployment for this resource does not exist. If you created the deployment within the "
        "last 5 minutes, please wait a moment and try again.",
        code="DeploymentNotFound",
    )


def headers(decision: Decision) -> dict[str, str]:
    """The rate-limit headers Azure sends: what remains of the minute's requests and tokens."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        state = decision.state(f"{kind}/minute")
        if state.limit:
            out[f"x-ratelimit-remaining-{kind}"] = str(state.remaining)
    return out


def rate_limited(
    operation: str, api_version: str, state: LimitState, wait_ms: int, limit_headers: dict[str, str]
) -> AzureError:
    """Azure's 429: which operation, which API version, token or call rate, and when to retry."""
    seconds = max(1, math.ceil(wait_ms / 1000))
    kind = "token rate limit" if state.name.startswith("tokens") else "call rate limit"
    message = (
        f"Requests to the {operation} Operation under Azure OpenAI API version {api_version} have exceeded "
        f"{kind} of your current OpenAI S0 pricing tier. Please retry after {seconds} "
        f"{'second' if seconds == 1 else 'seconds'}. "
        f"Please go here: {QUOTA_URL} if you would like to further increase the default rate limit."
    )
    return AzureError(
        429,
        message,
        code="429",
        headers={**limit_headers, "retry-after": str(seconds), "retry-after-ms": str(max(0, wait_ms))},
    )


def capacity_exceeded(wait_ms: int, limit_headers: dict[str, str]) -> AzureError:
    """Azure's 429 when the service, not the deployment's quota, is at capacity, word for word as
    users quote it (https://learn.microsoft.com/en-us/answers/a/12567967,
    https://github.com/pollinations/pollinations/issues/6260). The code is the string "429" of
    Azure's other 429 bodies: no quoted body shows its code."""
    seconds = max(1, math.ceil(wait_ms / 1000))
    message = (
        "The system is currently experiencing high demand and cannot process your request. Your request "
        "exceeds the maximum usage size allowed during peak load. Please retry after "
        f"{seconds} {'second' if seconds == 1 else 'seconds'}. For improved latency reliability, consider "
        "switching to Provisioned Throughput."
    )
    return AzureError(
        429,
        message,
        code="429",
        headers={**limit_headers, "retry-after": str(seconds), "retry-after-ms": str(max(0, wait_ms))},
    )
