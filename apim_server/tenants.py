"""What the configuration file's tenants may do beyond being admitted: the highest priority."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from apim_server.auth import presented_key
from apim_server.queue import Priority


class PriorityCaps:
    """Tenant key -> the highest ``x-apim-priority`` it may use; a higher ask is lowered to it."""

    def __init__(self, caps: Iterable[tuple[str, str]]) -> None:
        self._caps = [(key.encode(), Priority.parse(cap)) for key, cap in caps]

    def clamp(self, priority: Priority, headers: Mapping[str, str]) -> Priority:
        if not self._caps:
            return priority
        presented = presented_key(headers).encode()
        cap = Priority.HIGH
        # Every key is compared, as CallerKeys does, so timing tells nothing about them.
        for key, limit in self._caps:
            if hmac.compare_digest(presented, key):
                cap = limit
        return max(priority, cap)
