"""Optional API-key auth; the key a request is charged to."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers

from llm_mock_server.rejections import invalid_key, mask_key
from openai_wire.errors import APIError

SHARED_KEY = "default"
"""The one budget of a mock without auth: OpenAI's limits belong to the account, not a key."""


class KeyCheck:
    """Accepts any request when no keys are configured, else only the configured keys."""

    def __init__(self, keys: Iterable[str], refuse: Callable[[str | None], APIError] = invalid_key) -> None:
        self.keys = [k.encode() for k in keys]
        self.refuse = refuse

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @property
    def default_key(self) -> str:
        """The budget ``/status`` shows when not asked for another."""
        return self.keys[0].decode() if self.keys else SHARED_KEY

    def known_keys(self) -> list[str]:
        return [k.decode() for k in self.keys] if self.keys else [SHARED_KEY]

    def budget_key(self, headers: Headers) -> str:
        """The key whose limits a request is charged to; 401 for a missing or wrong key."""
        if not self.keys:
            return SHARED_KEY
        token = presented_key(headers)
        given = token.encode()
        match = None
        # Compare with every key, without stopping early, so timing says nothing about them.
        for key in self.keys:
            if hmac.compare_digest(given, key):
                match = key
        if match is None:
            raise self.refuse(token)
        return match.decode()


def presented_key(headers: Headers) -> str:
    """The bearer token, or Azure's ``api-key`` header."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key", "").strip()


def key_label(key: str) -> str:
    """How logs, metrics and /status name a budget without revealing the key."""
    return key if key == SHARED_KEY else mask_key(key)
