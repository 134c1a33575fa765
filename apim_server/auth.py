"""Callers' keys (``APIM_API_KEYS``): who may use the gateway. None configured = open."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from openai_wire.errors import APIError


class CallerKeys:
    """Checks the key a caller presents (``Authorization: Bearer`` or Azure's ``api-key``)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, headers: Mapping[str, str]) -> None:
        """Nothing when the caller may pass; a 401 in OpenAI's shape otherwise."""
        if not self._keys:
            return
        presented = presented_key(headers).encode()
        ok = False
        # Every key is compared, without stopping at a match, so timing tells nothing about them.
        for key in self._keys:
            ok |= hmac.compare_digest(presented, key)
        if not ok:
            raise unauthorized(bool(presented))


def presented_key(headers: Mapping[str, str]) -> str:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("api-key", "").strip()


def unauthorized(presented: bool) -> APIError:
    message = (
        "Incorrect API key provided for this gateway."
        if presented
        else "You didn't provide an API key. Send one of the gateway's keys as 'Authorization: Bearer KEY'."
    )
    return APIError(401, message, type="invalid_request_error", code="invalid_api_key")
