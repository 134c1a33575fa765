"""The one connection pool to the upstream API and what crosses it: headers in, headers out."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterable, Mapping
from http.cookiejar import CookieJar
from typing import Any
from urllib.parse import quote

import httpx

from apim_server.transport import LeanTransport
from openai_wire import azure
from openai_wire.endpoints import RESPONSES
from openai_wire.headers import read_ratelimit

# Caller headers that go upstream: content negotiation and what the official SDKs send. Every
# other header stays here: hop-by-hop ones (connection, keep-alive, te, trailer,
# transfer-encoding, upgrade, expect, proxy-*), the caller's network path (forwarded,
# x-forwarded-*, via), cookies, our own x-apim-*, and test controls such as x-mock-fault (one
# caller's forced 429 would pause every caller). The request id is ours (``headers``).
_FORWARDED = frozenset(
    {
        b"accept",
        b"content-type",
        b"user-agent",
        b"openai-beta",
        b"idempotency-key",
        b"x-client-request-id",
    }
)
_SDK_PREFIX = b"x-stainless-"
MOCK_FAULT = b"x-mock-fault"
# The caller's organization and project belong with the caller's key, never with ours.
_CALLER_ACCOUNT = frozenset({b"openai-organization", b"openai-project"})
_CREDENTIALS = frozenset({b"authorization", b"api-key"})
_PASSED_BACK = frozenset({"content-type", "retry-after", "retry-after-ms"})
DEFAULT_429_WAIT_S = 1.0
"""Pause after a 429 that says nothing about when to come back."""
AZURE_API_VERSION = "2024-10-21"
"""The api-version an Azure deployment is called with when its configuration names none (the
latest GA version of the data-plane API when this was written)."""
_URL_CACHE = 1024


class _NoCookies(CookieJar):
    """A gateway must not remember cookies: one caller's would be sent on another's request."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None


class Upstream:
    """The upstream base URL and one shared ``httpx.AsyncClient`` sized to the concurrency."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        max_concurrency: int,
        timeout_s: float,
        forward_caller_auth: bool = True,
        forward_mock_faults: bool = False,
        kind: str = "openai",
        api_version: str | None = None,
        azure_names: Mapping[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.kind = kind
        self.api_version = api_version or AZURE_API_VERSION
        # Azure names a model's deployment in the URL; absent from the file, the model id is it.
        self._azure_names = dict(azure_names or {})
        self._urls: dict[tuple[str, str], httpx.URL] = {}
        self.models_url = self._get_url("models")
        if not api_key:
            self._auth: tuple[bytes, bytes] | None = None
        elif kind == "azure":
            self._auth = (b"api-key", api_key.encode())  # Azure's header, not a bearer token
        else:
            self._auth = (b"authorization", f"Bearer {api_key}".encode())
        # The caller's credentials go upstream only when they are meant for it: not when we send
        # our own key, and not when they are the caller's key for this gateway.
        self._drop_caller_auth = self._auth is not None or not forward_caller_auth
        self._forwarded = _FORWARDED | {MOCK_FAULT} if forward_mock_faults else _FORWARDED
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._timeouts = timeout.as_dict()
        self.transport = LeanTransport(max_connections=max_concurrency)
        self.client = httpx.AsyncClient(
            transport=self.transport,
            timeout=timeout,
            # Loopback and private upstreams must not be sent through a proxy from the environment.
            trust_env=False,
            cookies=_NoCookies(),
            follow_redirects=False,
        )

    def url(self, path: str, model: str) -> httpx.URL:
        """Where a ``/v1`` POST ``path`` for ``model`` goes on this upstream.

        OpenAI-style: under the base URL, the model in the body. Azure: on the model's
        deployment (``{url}/openai/deployments/{name}/...?api-version=``); the Responses API is
        not deployment-scoped there, its body's model names the deployment.
        """
        if self.kind != "azure":
            model = ""  # one URL per path, whatever the model
        key = (path, model)
        found = self._urls.get(key)
        if found is not None:
            return found
        if self.kind != "azure":
            found = httpx.URL(self.base_url + path.removeprefix("/v1"))
        elif path == RESPONSES.path:
            found = self._get_url("responses")
        else:
            deployment = self._azure_names.get(model, model)
            found = httpx.URL(azure.deployment_url(self.base_url, deployment, path, self.api_version))
        if len(self._urls) < _URL_CACHE:  # a pool serving any model must not grow it without end
            self._urls[key] = found
        return found

    def body_for(self, path: str, model: str, body: bytes) -> bytes:
        """The body as this upstream must receive it: the caller's, except on Azure's Responses
        API, which is not deployment-scoped: there the body's model names the deployment."""
        if self.kind != "azure" or path != RESPONSES.path:
            return body
        name = self._azure_names.get(model)
        if name is None or name == model:
            return body
        data = json.loads(body)
        data["model"] = name
        return json.dumps(data, separators=(",", ":")).encode()

    def _get_url(self, rest: str) -> httpx.URL:
        if self.kind == "azure":
            version = quote(self.api_version, safe="")
            return httpx.URL(f"{self.base_url}/openai/{rest}?api-version={version}")
        return httpx.URL(f"{self.base_url}/{rest}")

    def model_url(self, model_id: str) -> httpx.URL:
        return self._get_url(f"models/{quote(model_id, safe='')}")

    @property
    def own_key(self) -> bool:
        """Whether requests carry the gateway's key (APIM_UPSTREAM_API_KEY) rather than the caller's."""
        return self._auth is not None

    def headers(self, caller: Iterable[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
        """The caller's allowed headers (``_FORWARDED``), our request id and the credentials."""
        out = [(b"x-request-id", request_id.encode()), (b"accept-encoding", b"identity")]
        auth = self._auth
        callers_key = not self._drop_caller_auth
        forwarded = self._forwarded
        for name, value in caller:
            if (
                name in forwarded
                or name.startswith(_SDK_PREFIX)
                or (callers_key and (name in _CREDENTIALS or name in _CALLER_ACCOUNT))
            ):
                out.append((name, value))
        if auth is not None:
            out.append(auth)
        return out

    async def post(self, url: httpx.URL, body: bytes, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
        """Send a request on the client's pool; the body is read (or streamed) by the caller.

        This goes to the shared client's transport directly: the client's per-request cookie,
        auth and redirect handling is work a proxy must not do anyway (cookies would leak from
        one caller to the next, redirects belong to the caller) and cost a sixth of the
        gateway's CPU per request.
        """
        return await self.transport.post(url, headers, body, self._timeouts)

    async def models(
        self, headers: list[tuple[bytes, bytes]], limit_s: float | None = None
    ) -> httpx.Response:
        extra: dict[str, Any] = {} if limit_s is None else {"timeout": limit_s}
        return await self.client.get(self.models_url, headers=headers, **extra)

    async def model(self, model_id: str, headers: list[tuple[bytes, bytes]]) -> httpx.Response:
        return await self.client.get(self.model_url(model_id), headers=headers)

    async def close(self) -> None:
        await self.client.aclose()


def passed_back(headers: httpx.Headers) -> dict[str, str]:
    """The upstream headers a caller sees: rate limits, OpenAI's own, content type, retry hints."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith(("x-ratelimit-", "openai-")) or name in _PASSED_BACK:
            out[name] = value
        elif name == "x-request-id":
            out["x-upstream-request-id"] = value
    return out


_PASSED_BACK_RAW = frozenset(name.encode() for name in _PASSED_BACK)


def passed_back_raw(headers: httpx.Headers) -> list[tuple[bytes, bytes]]:
    """``passed_back`` as header lines (lower-case names, values as received), for an answer
    written without a header dict; a repeated header stays repeated."""
    out: list[tuple[bytes, bytes]] = []
    for raw, value in headers.raw:
        name = raw.lower()
        if name.startswith((b"x-ratelimit-", b"openai-")) or name in _PASSED_BACK_RAW:
            out.append((name, value))
        elif name == b"x-request-id":
            out.append((b"x-upstream-request-id", value))
    return out


def retry_wait_s(headers: Mapping[str, str]) -> float:
    """How long a 429 asks us to stay away: retry-after-ms, retry-after, then the resets of
    the exhausted limits."""
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    resets = [reset for _, remaining, reset in remaining_and_reset(headers) if remaining == 0 and reset > 0]
    return max(resets) if resets else DEFAULT_429_WAIT_S


def remaining_and_reset(
    headers: Mapping[str, str], missing_reset_s: float = 0.0
) -> list[tuple[str, int, float]]:
    """(kind, remaining, reset seconds) for ``requests`` and ``tokens`` where the upstream says.

    ``missing_reset_s`` stands for a reset the upstream does not send: Azure OpenAI sends only
    the ``x-ratelimit-remaining-*`` headers, and its 0 left must not read as "reset now".
    """
    return [
        (kind, figures.remaining, missing_reset_s if figures.reset_s is None else figures.reset_s)
        for kind, figures in read_ratelimit(headers).items()
        if figures.remaining is not None
    ]


def _error_of(content: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error body; empty for any other body."""
    try:
        error = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def final_429(content: bytes) -> bool:
    """Whether an upstream 429 can never succeed by waiting: too large, or out of quota."""
    error = _error_of(content)
    code = f"{error.get('code') or ''} {error.get('type') or ''}"
    return "insufficient_quota" in code or str(error.get("message", "")).startswith("Request too large")


# How an upstream words a 429 that is about its own load, not the caller's quota: Azure OpenAI's
# "The system is currently experiencing high demand and cannot process your request. Your
# request exceeds the maximum usage size allowed during peak load. ..."
# (https://learn.microsoft.com/en-us/answers/a/12567967), OpenAI's "That model is currently
# overloaded with other requests. ..." (https://github.com/openai/openai-python/issues/414,
# https://help.openai.com/en/articles/6891834).
_CAPACITY_WORDS = ("currently overloaded", "experiencing high demand", "during peak load")


def capacity_429(content: bytes) -> bool:
    """Whether an upstream 429 says the service is overloaded (its capacity, not our budget):
    waited out like any 429, but its figures say nothing about the budget's limits."""
    message = str(_error_of(content).get("message", "")).lower()
    return any(words in message for words in _CAPACITY_WORDS)
