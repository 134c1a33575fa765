"""The configuration file's tenants as the gateway runs them: who a caller is (by key), the
highest priority it may use, its weight in a contended budget, and its sub-limits."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from apim_server.auth import presented_key
from apim_server.config_file import TenantPlan
from apim_server.queue import Priority
from ratelimit.limiter import Limiter
from ratelimit.store import Store

UNNAMED = "(none)"
"""How views name the callers that are no tenant (``APIM_API_KEYS``, an open gateway)."""


@dataclass(eq=False, slots=True)
class Tenant:
    """One tenant; compared by identity (it is a flow's key in every pool's fair order)."""

    name: str
    weight: float
    max_priority: Priority
    limiter: Limiter | None = None  # its sub-limits over all its traffic
    key: str = ""  # the sub-limits' store key: the name and a fingerprint of the limits


def name_of(tenant: Tenant | None) -> str:
    return UNNAMED if tenant is None else tenant.name


class Tenants:
    """Caller key -> Tenant. Without tenants every caller is the one implicit tenant (None)."""

    def __init__(self, plans: Iterable[TenantPlan], store: Store) -> None:
        self.all: list[Tenant] = []
        self._keys: list[tuple[bytes, Tenant]] = []
        for plan in plans:
            limiter = Limiter(plan.limits, store) if plan.limits is not None else None
            key = f"tenant:{plan.name}|{plan.limits.fingerprint()}" if plan.limits is not None else ""
            tenant = Tenant(plan.name, plan.weight, Priority.parse(plan.max_priority), limiter, key)
            self.all.append(tenant)
            self._keys.append((plan.key.encode(), tenant))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def identify(self, headers: Mapping[str, str]) -> Tenant | None:
        """The tenant whose key the caller presents (None: no tenant's)."""
        if not self._keys:
            return None
        presented = presented_key(headers).encode()
        found = None
        # Every key is compared, as CallerKeys does, so timing tells nothing about them.
        for key, tenant in self._keys:
            if hmac.compare_digest(presented, key):
                found = tenant
        return found

    @staticmethod
    def clamp(priority: Priority, tenant: Tenant | None) -> Priority:
        """``priority``, lowered to the tenant's ``max_priority``."""
        return priority if tenant is None else max(priority, tenant.max_priority)
