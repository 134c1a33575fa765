"""The one connection pool to the upstream API and what crosses it: headers in, headers out."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from openai_wire.headers import parse_go_duration

# Caller headers that describe the caller's hop, not the request: never forwarded.
_HOP = frozenset(
    {
        b"host",
        b"content-length",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-connection",
        b"accept-encoding",
        b"cookie",
        b"x-request-id",
        b"x-apim-priority",
    }
)
_PASSED_BACK = frozenset({"content-type", "retry-after", "retry-after-ms"})
DEFAULT_429_WAIT_S = 1.0
"""Pause after a 429 that says nothing about when to come back."""


class Upstream:
    """The upstream base URL and one shared ``httpx.AsyncClient`` sized to the concurrency."""

    def __init__(self, base_url: str, api_key: str, max_concurrency: int, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.chat_url = httpx.URL(f"{self.base_url}/chat/completions")
        self.models_url = httpx.URL(f"{self.base_url}/models")
        self._auth = f"Bearer {api_key}".encode() if api_key else None
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_concurrency,
                max_keepalive_connections=max_concurrency,
                keepalive_expiry=30,
            ),
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            # Loopback and private upstreams must not be sent through a proxy from the environment.
            trust_env=False,
            follow_redirects=False,
        )

    def headers(self, caller: Iterable[tuple[bytes, bytes]], request_id: str) -> list[tuple[bytes, bytes]]:
        """The caller's headers minus hop-by-hop ones, plus our request id and credentials."""
        out = [(b"x-request-id", request_id.encode()), (b"accept-encoding", b"identity")]
        auth = self._auth
        for name, value in caller:
            if name in _HOP or (auth is not None and name == b"authorization"):
                continue
            out.append((name, value))
        if auth is not None:
            out.append((b"authorization", auth))
        return out

    async def chat(self, body: bytes, headers: list[tuple[bytes, bytes]], stream: bool) -> httpx.Response:
        request = self.client.build_request("POST", self.chat_url, content=body, headers=headers)
        return await self.client.send(request, stream=stream)

    async def models(
        self, headers: list[tuple[bytes, bytes]], limit_s: float | None = None
    ) -> httpx.Response:
        extra: dict[str, Any] = {} if limit_s is None else {"timeout": limit_s}
        return await self.client.get(self.models_url, headers=headers, **extra)

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


def retry_wait_s(headers: httpx.Headers) -> float:
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


def remaining_and_reset(headers: Mapping[str, str]) -> list[tuple[str, int, float]]:
    """(kind, remaining, reset seconds) for ``requests`` and ``tokens`` where the upstream says."""
    out = []
    for kind in ("requests", "tokens"):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        if remaining is None:
            continue
        try:
            left = int(remaining)
        except ValueError:
            continue
        out.append((kind, left, parse_go_duration(headers.get(f"x-ratelimit-reset-{kind}", ""))))
    return out


def final_429(content: bytes) -> bool:
    """Whether an upstream 429 can never succeed by waiting: too large, or out of quota."""
    try:
        error = json.loads(content).get("error") or {}
    except (ValueError, AttributeError):
        return False
    if not isinstance(error, dict):
        return False
    code = f"{error.get('code') or ''} {error.get('type') or ''}"
    return "insufficient_quota" in code or str(error.get("message", "")).startswith("Request too large")
