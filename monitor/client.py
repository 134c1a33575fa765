"""Fetching both services' ``/status`` at once, with every failure turned into a readable reason."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

MOCK = "mock"
APIM = "apim"


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """One service as the monitor last saw it: its ``/status`` body, or why there is none."""

    name: str
    url: str
    status: dict[str, Any] | None = None
    error: str | None = None
    latency_ms: float | None = None

    @property
    def up(self) -> bool:
        return self.status is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "up": self.up,
            "error": self.error,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Both services at one instant (wall-clock seconds)."""

    mock: ServiceStatus
    apim: ServiceStatus
    taken_at: float = field(default_factory=time.time)

    def as_json(self) -> dict[str, Any]:
        return {"taken_at": round(self.taken_at, 3), MOCK: self.mock.as_json(), APIM: self.apim.as_json()}


def describe_error(exc: BaseException) -> str:
    """A short reason a human recognises ("connection refused") rather than a traceback."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}{error_message(exc.response)}"
    if isinstance(exc, json.JSONDecodeError | ValueError):
        return "/status did not answer a JSON object"
    # httpx wraps the OS error (and anyio sometimes a group of them): the cause names it best.
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.ConnectError):
        return "connection refused" if "refused" in str(exc).lower() else f"cannot connect: {exc}"
    return str(exc) or type(exc).__name__


def error_message(response: httpx.Response) -> str:
    """``": message"`` from an OpenAI-shaped error body (a store outage says so), else nothing."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {message}" if isinstance(message, str) and message else ""


async def fetch_status(
    client: httpx.AsyncClient,
    name: str,
    url: str,
    params: dict[str, str] | None = None,
    operator_key: str | None = None,
) -> ServiceStatus:
    """``GET {url}/status`` (with the service's operator key, if it has one); never raises."""
    started = time.perf_counter()
    headers = {"authorization": f"Bearer {operator_key}"} if operator_key else None
    try:
        response = await client.get(f"{url.rstrip('/')}/status", params=params, headers=headers)
        response.raise_for_status()
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
    except (httpx.HTTPError, ValueError) as exc:
        return ServiceStatus(name, url, error=describe_error(exc))
    return ServiceStatus(name, url, status=body, latency_ms=(time.perf_counter() - started) * 1000)


class StatusClient:
    """Both services' ``/status``, fetched concurrently over one keep-alive client."""

    def __init__(
        self,
        mock_url: str,
        apim_url: str,
        timeout: float = 2.0,
        mock_api_key: str | None = None,
        mock_operator_key: str | None = None,
        apim_operator_key: str | None = None,
    ) -> None:
        self.mock_url = mock_url
        self.apim_url = apim_url
        self._mock_operator_key = mock_operator_key
        self._apim_operator_key = apim_operator_key
        # The mock keeps limits per API key and shows its default key's unless asked.
        self._mock_params = {"api_key": mock_api_key} if mock_api_key else None
        # No proxy from the environment: the services are on this machine or this network.
        self._client = httpx.AsyncClient(timeout=timeout, trust_env=False)

    async def snapshot(self) -> Snapshot:
        mock, apim = await asyncio.gather(
            fetch_status(self._client, MOCK, self.mock_url, self._mock_params, self._mock_operator_key),
            fetch_status(self._client, APIM, self.apim_url, operator_key=self._apim_operator_key),
        )
        return Snapshot(mock, apim)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> StatusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
