"""From a request's ``model`` to its pool: the budgets that serve that model, their queue, their
dispatcher. Built once at start from the plan (the file, or the ``APIM_*`` settings)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from apim_server.budget import Budget, Deployment
from apim_server.config_file import ANY_MODEL, Plan
from apim_server.dispatcher import Dispatcher
from apim_server.flows import share_of
from apim_server.grant import Grant
from apim_server.queue import FULL_SHARES, Ticket, TicketQueue
from apim_server.store_health import StoreHealth
from ratelimit.cost import Operation
from ratelimit.limits import Cost, Decision, LimitState
from ratelimit.store import Store

if TYPE_CHECKING:
    from apim_server.tenants import Tenant


class Pool:
    """Every budget serving one model (one, without a file), with the one queue they share."""

    def __init__(self, model: str, members: list[Budget], dispatcher: Dispatcher) -> None:
        self.model = model
        self.members = members
        self.dispatcher = dispatcher
        self.queue = dispatcher.queue
        self._estimators = list(
            {id(m.deployment.estimator): m.deployment.estimator for m in members}.values()
        )
        # The pool's minute budget, all members together: what a cost's fair share is of.
        minute = [m.limiter.policy.windows[0] for m in members]
        self.rpm = 0 if any(not w.requests for w in minute) else sum(w.requests for w in minute)
        self.tpm = 0 if any(not w.tokens for w in minute) else sum(w.tokens for w in minute)

    def estimate(self, body: Mapping[str, Any], operation: Operation = Operation.CHAT) -> Cost:
        """The cost charged on whichever member admits it: the largest of the members' rules
        (one rule in the usual case), so no member is ever under-charged."""
        costs = [e.estimate(body, operation=operation) for e in self._estimators]
        return max(costs, key=lambda c: c.tokens)

    def share(self, cost: Cost, tenant: Tenant | None) -> int:
        """``cost``'s place in the fair order: its dominant share of the pool's budget over the
        tenant's weight (see ``flows``)."""
        weight = 1.0 if tenant is None else tenant.weight
        return share_of(cost.requests, cost.tokens, self.rpm, self.tpm, weight)

    def too_large(self, cost: Cost) -> LimitState | None:
        """What refuses ``cost`` when no member could ever take it (else None)."""
        found = None
        for member in self.members:
            over = member.limiter.too_large(cost)
            if over is None:
                return None
            found = found or over
        return found

    def others_in_service(self, grant: Grant) -> bool:
        """Whether a member on another deployment could take a request that failed on ``grant``'s."""
        failed = grant.budget.deployment
        return any(m.deployment is not failed and not m.deployment.out for m in self.members)


class Router:
    """Deployments, budgets and pools of one gateway instance."""

    def __init__(
        self,
        plan: Plan,
        store: Store,
        deployments: dict[str, Deployment],
        health: StoreHealth,
        max_queue: int,
        batch_size: int,
        inline: bool,
        on_admit: Callable[[Ticket, Budget, Decision], None] | None = None,
        on_return: Callable[[int], None] | None = None,
        queue_shares: tuple[int, int, int] = FULL_SHARES,
        aging_s: float = 0.0,
        instance: str | None = None,
    ) -> None:
        self.deployments = deployments
        self.budgets: list[Budget] = []
        by_model: dict[str, list[Budget]] = {}
        for d in plan.deployments:
            for model, limits in d.models.items():
                budget = Budget(deployments[d.name], model, limits, store, on_return)
                self.budgets.append(budget)
                by_model.setdefault(model, []).append(budget)
        self.pools: dict[str, Pool] = {}
        for model, members in by_model.items():
            dispatcher = Dispatcher(
                members,
                TicketQueue(max_queue, queue_shares, aging_s),
                health,
                on_admit=on_admit,
                batch_size=batch_size,
                inline=inline,
                name=model,
                instance=instance,
            )
            self.pools[model] = Pool(model, members, dispatcher)
        self._any = self.pools.get(ANY_MODEL)
        # An Azure caller names a deployment, not a model: the file's deployment names stand for
        # their models (a model id of the same spelling wins).
        self.aliases = {
            name: model
            for d in plan.deployments
            for model, name in d.azure_names.items()
            if name not in self.pools
        }

    def route(self, model: str) -> Pool | None:
        """The pool serving ``model`` (or the Azure deployment name ``model``); None when no
        deployment serves it (a 404)."""
        return self.pools.get(model) or self.pools.get(self.aliases.get(model, "")) or self._any

    def model_id(self, name: str) -> str:
        """The model id a request naming ``name`` (a model, or an Azure deployment) is for."""
        return name if name in self.pools else self.aliases.get(name, name)

    @property
    def single(self) -> Pool | None:
        """The pool when there is exactly one budget (the shape /status keeps from before)."""
        if len(self.budgets) == 1:
            return next(iter(self.pools.values()))
        return None

    def dispatchers(self) -> list[Dispatcher]:
        return [p.dispatcher for p in self.pools.values()]

    @property
    def depth(self) -> int:
        return sum(p.queue.depth for p in self.pools.values())

    @property
    def in_flight(self) -> int:
        return sum(d.slots.used for d in self.deployments.values())

    def oldest_arrival(self) -> float | None:
        found = [a for p in self.pools.values() if (a := p.queue.oldest_arrival()) is not None]
        return min(found) if found else None

    def arrivals(self) -> list[float]:
        """Monotonic arrival times of every request waiting in any pool."""
        return [a for p in self.pools.values() for a in p.queue.arrivals()]

    def depth_by_class(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pool in self.pools.values():
            for name, n in pool.queue.depth_by_class().items():
                out[name] = out.get(name, 0) + n
        return out

    async def record_empty(self) -> bool:
        """Whether the store holds nothing of the last window for any budget (restarted empty)."""
        for budget in self.budgets:
            usage = await budget.peek()
            if any(s.used for s in usage.states if "/day" not in s.name):
                return False
        return True
