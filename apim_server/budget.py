"""Budgets and the deployments that hold them: what a pool's dispatcher admits requests on.

A deployment is one upstream (its connection pool, its concurrency, whether it answers); a
budget is one model's limits on one deployment, kept in the shared limiter under a key that
names the deployment, the model and a fingerprint of the policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from apim_server.config_file import DeploymentPlan
from apim_server.slots import Slots
from apim_server.upstream import Upstream
from ratelimit.cost import CostEstimator
from ratelimit.fair_share import Ask
from ratelimit.limiter import Limiter
from ratelimit.limits import NOTHING, Cost, Decision, Limits, LimitState
from ratelimit.store import Store

log = logging.getLogger("apim.budget")

OUT_AFTER_FAILURES = 3
"""Consecutive failures (connect errors, 5xx) after which a deployment is taken out."""
OUT_FIRST_S = 5.0
OUT_MAX_S = 120.0
PROBE_WAIT_S = 10.0
"""How long the rest wait for a probe's answer; a probe whose caller left never reports back."""


class Deployment:
    """One upstream as the gateway uses it: client pool, slots, health of its answers."""

    def __init__(self, plan: DeploymentPlan, upstream: Upstream, default_max_tokens: int) -> None:
        self.plan = plan
        self.name = plan.name
        self.upstream = upstream
        self.slots = Slots(plan.max_concurrency)
        self.estimator = CostEstimator(plan.cost_rule, default_max_tokens)
        self.cooling_until = 0.0  # monotonic: a failure asked us to stay away this long
        self.failures = 0  # consecutive
        self.out_for = 0.0  # length of the current time out (doubles while failures go on)
        self.reason: str | None = None
        self.probing_until = 0.0  # back from a time out: one request tries it before the rest

    def admittable(self) -> bool:
        """Whether a request may be admitted here now (not cooling, not awaiting its probe)."""
        now = time.monotonic()
        if self.cooling_until > now:
            return False
        return not (self.failures >= OUT_AFTER_FAILURES and self.probing_until > now)

    def granted(self) -> None:
        if self.failures >= OUT_AFTER_FAILURES:
            self.probing_until = time.monotonic() + PROBE_WAIT_S

    def ready_in(self) -> float:
        return max(0.0, self.cooling_until - time.monotonic())

    @property
    def out(self) -> bool:
        return self.failures >= OUT_AFTER_FAILURES and self.ready_in() > 0

    def failed(self, reason: str, wait_s: float) -> None:
        """A connect error or 5xx: stay away ``wait_s``; after repeated ones, take it out a while.

        When the time out ends the next request probes it: a success brings it back, a failure
        takes it out again for twice as long.
        """
        self.failures += 1
        self.reason = reason
        self.probing_until = 0.0
        if self.failures >= OUT_AFTER_FAILURES:
            self.out_for = min(OUT_MAX_S, self.out_for * 2 if self.out_for else OUT_FIRST_S)
            wait_s = max(wait_s, self.out_for)
            log.warning(
                "deployment %s taken out for %.1fs after %d failures in a row (%s)",
                self.name,
                wait_s,
                self.failures,
                reason,
            )
        self.cool(wait_s)

    def cool(self, wait_s: float) -> None:
        until = time.monotonic() + wait_s
        self.cooling_until = max(self.cooling_until, until)

    def answered(self) -> None:
        """A non-failure answer: a deployment that was out is back."""
        if self.failures >= OUT_AFTER_FAILURES:
            log.warning("deployment %s answers again: back in", self.name)
        self.probing_until = 0.0
        self.failures = 0
        self.out_for = 0.0
        self.reason = None

    def status(self) -> dict[str, Any]:
        ready_in = self.ready_in()
        state = "out" if self.out else "cooling" if ready_in > 0 else "in"
        return {
            "state": state,
            "reason": self.reason if state != "in" or self.failures else None,
            "ready_in_s": round(ready_in, 3),
            "failures": self.failures,
            "in_flight": self.slots.used,
            "max_concurrency": self.slots.size,
        }


class Budget:
    """One model on one deployment: its limits in the shared store, and its own pause."""

    def __init__(
        self,
        deployment: Deployment,
        model: str,
        limits: Limits,
        store: Store,
        on_return: Callable[[int], None] | None = None,
    ) -> None:
        self.deployment = deployment
        self.model = model
        self.configured = limits
        self.limiter = Limiter(limits, store)
        self.key = f"{deployment.plan.store_id}|{model}|{limits.fingerprint()}"
        self.paused_until = 0.0  # monotonic: the upstream said this budget is exhausted
        # How long an upstream's "0 left" lasts when it sends no reset (Azure sends none): one
        # sub-window of its enforcement, or a second.
        self.unknown_reset_s = float(limits.short_window_s or 1)
        self.last_decision: Decision | None = None
        self._on_return = on_return

    @property
    def name(self) -> str:
        return f"{self.deployment.name}/{self.model}"

    def ready_in(self) -> float:
        """How long before this budget may be asked at all (its pause, its deployment's)."""
        return max(0.0, self.paused_until - time.monotonic(), self.deployment.ready_in())

    def pause(self, seconds: float) -> None:
        """Admit nothing here for ``seconds`` (the upstream said so); extends, never shortens."""
        until = time.monotonic() + seconds
        self.paused_until = max(self.paused_until, until)

    @property
    def paused_for(self) -> float:
        return max(0.0, self.paused_until - time.monotonic())

    def enforce(self, limits: Limits, hard: Limits) -> None:
        """Evaluate this budget's record under ``limits`` from now on (the upstream's own, lower
        figures: ``following``), refusing as too large only what exceeds ``hard``. The key stays
        the configured one, so nothing already admitted is forgotten."""
        if limits == self.configured and hard == self.configured:
            self.limiter = Limiter(limits, self.limiter.store)
        else:
            self.limiter = _Followed(limits, hard, self.limiter.store)

    async def acquire(self, cost: Cost, fair: Ask | None = None) -> Decision:
        decision = await self.limiter.acquire(self.key, cost, fair)
        self.last_decision = decision
        return decision

    async def peek(self, cost: Cost = NOTHING) -> Decision:
        return await self.limiter.peek(self.key, cost)

    async def charge(self, tokens: int) -> Decision:
        return await self.limiter.charge(self.key, tokens)

    async def refund(self, tokens: int, admitted_at_ms: int) -> Decision:
        return await self.limiter.refund(self.key, tokens, admitted_at_ms)

    async def give_back_share(self, fair: Ask, decision: Decision) -> None:
        """An admission made with ``fair`` was not served: its tenant's share comes off the
        tenant's finish tag in the budget's record (the request and tokens stay counted)."""
        await self.limiter.refund(self.key, 0, decision.now_ms, 0, fair)

    async def return_tokens(self, tokens: int, decision: Decision) -> None:
        """An admission that will not be sent gives its tokens back."""
        if tokens <= 0:
            return
        try:
            await self.limiter.refund(self.key, tokens, decision.now_ms)
        except Exception:
            log.exception("could not return the tokens of an abandoned admission")
            return
        if self._on_return is not None:
            self._on_return(tokens)


class _Followed(Limiter):
    """A budget's limiter while it follows the upstream's figures: admission under the lower
    levels, but "too large" only against the limits a request can never pass (the configured
    ones, or the upstream's own reported limit): a request above a level that only reflects
    someone else's spending fits again once that spending leaves the window."""

    def __init__(self, limits: Limits, hard: Limits, store: Store) -> None:
        super().__init__(limits, store)
        self._hard = hard.policy()

    def too_large(self, cost: Cost) -> LimitState | None:
        return self._hard.too_large(cost)
