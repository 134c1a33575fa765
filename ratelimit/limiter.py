"""The limiter both services use: a policy, a store, and the views of a decision they report."""

from __future__ import annotations

import logging

from ratelimit.embedded import EmbeddedStore
from ratelimit.limits import NOTHING, Cost, Decision, Limits, LimitState
from ratelimit.redis_store import RedisStore
from ratelimit.store import Clock, Store

log = logging.getLogger(__name__)

# How /status names each limit of a policy.
STATUS_NAMES = {"requests/minute": "rpm", "tokens/minute": "tpm", "requests/day": "rpd", "tokens/day": "tpd"}


def open_store(
    redis_url: str, prefix: str, clock: Clock | None = None, replicas: int = 0, replica_wait_ms: int = 100
) -> Store:
    """A Redis store for a URL (``replicas``: see ``RedisStore.from_url``), the embedded store
    for an empty one."""
    if redis_url:
        return RedisStore.from_url(
            redis_url, prefix=prefix, clock=clock, replicas=replicas, replica_wait_ms=replica_wait_ms
        )
    return EmbeddedStore(clock=clock)


class Limiter:
    """The four limits of one service, evaluated in one store, per budget key."""

    def __init__(self, limits: Limits, store: Store) -> None:
        self.limits = limits
        self.policy = limits.policy()
        self.store = store

    def too_large(self, cost: Cost) -> LimitState | None:
        return self.policy.too_large(cost)

    async def acquire(self, key: str, cost: Cost) -> Decision:
        return await self.store.acquire(key, self.policy, cost)

    async def charge(self, key: str, tokens: int) -> Decision:
        return await self.store.charge(key, self.policy, Cost(0, tokens))

    async def refund(self, key: str, tokens: int, admitted_at_ms: int) -> Decision:
        return await self.store.refund(key, self.policy, tokens, admitted_at_ms)

    async def peek(self, key: str, cost: Cost = NOTHING) -> Decision:
        return await self.store.peek(key, self.policy, cost)

    async def reset(self, key: str) -> None:
        await self.store.reset(key)


def status_limits(decision: Decision) -> dict[str, dict[str, float | int]]:
    """The ``limits`` object of ``/status``: rpm, tpm, rpd, tpd (and any sub-window)."""
    out: dict[str, dict[str, float | int]] = {}
    for state in decision.states:
        name = STATUS_NAMES.get(state.name)
        if name is None:
            if not state.limit:
                continue
            name = state.name.replace("requests/", "rp")
        out[name] = {
            "limit": state.limit,
            "used": state.used,
            "remaining": state.remaining,
            "reset_s": round(state.reset_ms / 1000, 3),
        }
    return out
