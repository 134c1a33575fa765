"""The errors the mock answers in OpenAI's words: rate limits, auth, unknown models."""

from __future__ import annotations

from openai_wire.errors import LIMIT_WORDS, APIError, clip
from openai_wire.headers import go_duration, retry_after_headers
from ratelimit.limits import LimitState

ORGANIZATION = "org-mock"
LIMITS_URL = "https://platform.openai.com/account/rate-limits"


def limit_words(state: LimitState, rpm: int) -> tuple[str, str]:
    """The phrase and error type for a limit; a short RPM window is named with its RPM."""
    if state.name in LIMIT_WORDS:
        return LIMIT_WORDS[state.name], state.name.partition("/")[0]
    unit, _, window = state.name.partition("/")
    if unit == "requests":
        return f"requests per {window} (RPM {rpm} enforced per {window})", "requests"
    return f"tokens per {window}", "tokens"


def short_name(state: LimitState) -> str:
    """rpm, tpm, rpd, tpd (or rp10s for a short window): the label metrics and /status use."""
    unit, _, window = state.name.partition("/")
    prefix = "rp" if unit == "requests" else "tp"
    return prefix + {"minute": "m", "day": "d"}.get(window, window)


def rate_limited(
    model: str, state: LimitState, requested: int, wait_ms: int, rpm: int, headers: dict[str, str]
) -> APIError:
    """OpenAI's 429 for a limit that is full now: how much is used and how long to wait."""
    words, kind = limit_words(state, rpm)
    message = (
        f"Rate limit reached for {clip(model)} in organization {ORGANIZATION} on {words}: "
        f"Limit {state.limit}, Used {state.used}, Requested {requested}. "
        f"Please try again in {go_duration(wait_ms)}. Visit {LIMITS_URL} to learn more."
    )
    return APIError(
        429,
        message,
        type=kind,
        code="rate_limit_exceeded",
        headers={**headers, **retry_after_headers(wait_ms)},
    )


def too_large(model: str, state: LimitState, requested: int, rpm: int, headers: dict[str, str]) -> APIError:
    """OpenAI's 429 for a request that exceeds a limit on its own and so can never run."""
    words, kind = limit_words(state, rpm)
    message = (
        f"Request too large for {clip(model)} in organization {ORGANIZATION} on {words}: "
        f"Limit {state.limit}, Requested {requested}. "
        "The input or output tokens must be reduced in order to run successfully. "
        f"Visit {LIMITS_URL} to learn more."
    )
    # Waiting cannot help, so tell clients that honour it (the openai SDK does) not to retry.
    return APIError(
        429, message, type=kind, code="rate_limit_exceeded", headers={**headers, "x-should-retry": "false"}
    )


def overloaded(request_id: str, wait_ms: int, headers: dict[str, str]) -> APIError:
    """OpenAI's 429 when the model, not the key's limits, is at capacity, in its words
    (https://github.com/openai/openai-python/issues/414, help.openai.com article 6891834)."""
    return APIError(
        429,
        "That model is currently overloaded with other requests. You can retry your request, or contact "
        "us through our help center at help.openai.com if the error persists. (Please include the "
        f"request ID {request_id} in your message.)",
        type="server_error",
        headers={**headers, **retry_after_headers(wait_ms)},
    )


def mask_key(key: str) -> str:
    """An API key as OpenAI echoes it: the first three and last four characters."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}...{key[-4:]}"


def invalid_key(key: str | None) -> APIError:
    if not key:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
            "https://platform.openai.com/account/api-keys."
        )
    else:
        message = (
            f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
            "https://platform.openai.com/account/api-keys."
        )
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{clip(model)}` does not exist or you do not have access to it.",
        type="invalid_request_error",
        code="model_not_found",
    )


def server_error(status: int) -> APIError:
    if status == 503:
        return APIError(
            503,
            "The server is overloaded or not ready yet.",
            type="server_error",
            code="service_unavailable",
        )
    return APIError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type="server_error",
        code="internal_error",
    )


def unsupported_model(model: str, path: str) -> APIError:
    """A model the mock serves, but not on this endpoint (an embedding model asked to chat)."""
    return APIError(
        400,
        f"The model `{model}` is not supported by the {path} endpoint.",
        type="invalid_request_error",
        param="model",
        code="model_not_supported",
    )
