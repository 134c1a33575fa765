"""The upstream half of ``/readyz``: a probe on a connection of its own.

Probing on the forwarding pool would wait for a free slot, and a saturated pool is the normal
state of a busy gateway: every busy instance would be taken out of rotation.
"""

from __future__ import annotations

import httpx

from apim_server.transport import LeanTransport
from apim_server.upstream import Upstream

PROBE_TIMEOUT_S = 1.0


class UpstreamProbe:
    """``GET {upstream}/models`` on one connection that nothing else uses."""

    def __init__(self, upstream: Upstream, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._upstream = upstream
        self._timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            transport=LeanTransport(max_connections=1),
            timeout=timeout_s,
            trust_env=False,
            follow_redirects=False,
        )

    async def reachable(self) -> bool:
        """Whether the upstream answers at all (any status below 500) within the timeout."""
        headers = self._upstream.headers((), "readyz")
        try:
            response = await self._client.get(self._upstream.models_url, headers=headers)
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False
        return response.status_code < 500

    async def close(self) -> None:
        await self._client.aclose()
