"""The operator key (``APIM_OPERATOR_KEY``, ``MOCK_OPERATOR_KEY``) guarding ``/status`` and
``/metrics``: what they show (budgets, queue, callers' traffic) is the operator's business.

``/healthz`` and ``/readyz`` stay open: orchestrators probe them without credentials.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from openai_wire.errors import APIError


class OperatorKey:
    """Checks ``Authorization: Bearer KEY`` against the operator key; open when none is set."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    @property
    def enabled(self) -> bool:
        return bool(self._key)

    def check(self, headers: Mapping[str, str]) -> None:
        """Nothing when the request may see operator pages; a 401 in OpenAI's shape otherwise."""
        if not self._key:
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        if not hmac.compare_digest(presented, self._key):
            raise APIError(
                401,
                "This page needs the operator key: send it as 'Authorization: Bearer KEY'."
                if not presented
                else "Incorrect operator key.",
                type="invalid_request_error",
                code="invalid_operator_key",
            )
