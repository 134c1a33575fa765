"""An admission that was granted: the budget it was charged to, the decision, the slot it holds."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ratelimit.limits import Decision

if TYPE_CHECKING:
    from apim_server.admission import TenantCharge
    from apim_server.budget import Budget
    from apim_server.queue import Ticket
    from apim_server.slots import Slot

log = logging.getLogger("apim.grant")
_pending: set[asyncio.Task[Any]] = set()


class Grant:
    """Owns one concurrency slot of its deployment until ``release`` (idempotent: every path that
    ends a request may call it, and the slot comes back exactly once)."""

    __slots__ = ("budget", "charge", "decision", "slot", "ticket", "withdrawn")

    def __init__(
        self,
        budget: Budget,
        decision: Decision,
        slot: Slot,
        ticket: Ticket,
        charge: TenantCharge | None = None,
    ) -> None:
        self.budget = budget
        self.decision = decision
        self.slot = slot
        self.ticket = ticket
        self.charge = charge  # the tenant's sub-limit admission, if it has sub-limits
        self.withdrawn = False

    def release(self) -> None:
        self.slot.release()

    async def withdraw(self) -> None:
        """Nothing will be sent: free the slot and give the tokens back (the request itself stays
        counted: a store cannot return it, and the upstream never saw it, so this errs safe)."""
        self.release()
        if not self.withdrawn:
            self.withdrawn = True
            await self.budget.return_tokens(self.ticket.cost.tokens, self.decision)
            if self.charge is not None:
                await self.charge.give_back(self.ticket.cost.requests, self.ticket.cost.tokens)

    def withdraw_soon(self) -> None:
        """``withdraw`` from a place that cannot await (a cancelled coroutine): the slot now,
        the tokens on a task of their own."""
        self.release()
        if self.withdrawn:
            return
        self.withdrawn = True
        task = asyncio.get_running_loop().create_task(self.withdraw_tokens())
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    async def withdraw_tokens(self) -> None:
        await self.budget.return_tokens(self.ticket.cost.tokens, self.decision)
        if self.charge is not None:
            await self.charge.give_back(self.ticket.cost.requests, self.ticket.cost.tokens)
