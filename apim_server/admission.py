"""One request's admission: its tenant's sub-limits first, then the budget's limits and fair share.

Two steps, not one Lua call over both records: a tenant's traffic spans budgets of every
deployment and model, whose keys live in different hash slots on a Redis Cluster; one call over
both would need every budget a tenant touches on one shard. So the tenant's sub-limits are taken
first (atomic on their own key), then the budget's; when the budget says no (its limits, a fair
share yield, or an error) the tenant's admission is given back whole, requests and tokens. That
is exact for "never over" (a tenant's admissions never exceed its sub-limits, a budget's never
exceed its limits); the cost is that a tenant's budget may be held for one round trip by an
admission that is then returned, so a concurrent request of the same tenant may wait once more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ratelimit.fair_share import Ask
from ratelimit.limits import Decision

if TYPE_CHECKING:
    from apim_server.budget import Budget
    from apim_server.queue import Ticket
    from apim_server.tenants import Tenant

log = logging.getLogger("apim.admission")


@dataclass(frozen=True, slots=True)
class TenantCharge:
    """A tenant's sub-limit admission: what to settle or give back on it."""

    tenant: Tenant
    decision: Decision

    async def give_back(self, requests: int, tokens: int) -> None:
        limiter = self.tenant.limiter
        assert limiter is not None
        try:
            await limiter.refund(self.tenant.key, tokens, self.decision.now_ms, requests)
        except Exception:  # the tenant then holds phantom usage: stricter, never over
            log.exception("could not give back tenant %s's admission", self.tenant.name)

    async def excess(self, tokens: int) -> None:
        """Usage above the estimate counts against the tenant's sub-limits too."""
        limiter = self.tenant.limiter
        assert limiter is not None
        await limiter.charge(self.tenant.key, tokens)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the two steps said: ``tenant_denial`` when the tenant's own sub-limit refused (the
    budget was not asked), else the budget's ``decision`` and, if admitted, the tenant's charge."""

    decision: Decision | None
    tenant_denial: Decision | None = None
    charge: TenantCharge | None = None


async def admit(member: Budget, ticket: Ticket, ask: Ask | None = None) -> Outcome:
    """Ask the tenant's sub-limits, then ``member``'s budget (see the module)."""
    tenant = ticket.tenant
    charge = None
    if tenant is not None and tenant.limiter is not None:
        taken = await tenant.limiter.acquire(tenant.key, ticket.cost)
        if not taken.allowed:
            return Outcome(None, tenant_denial=taken)
        charge = TenantCharge(tenant, taken)
    try:
        decision = await member.acquire(ticket.cost, ask)
    except BaseException:
        if charge is not None:
            await charge.give_back(ticket.cost.requests, ticket.cost.tokens)
        raise
    if not decision.allowed and charge is not None:
        await charge.give_back(ticket.cost.requests, ticket.cost.tokens)
        charge = None
    return Outcome(decision, charge=charge)
