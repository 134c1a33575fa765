"""The limiter both services use: a policy, a store, and the views of a decision they report."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

from ratelimit.embedded import EmbeddedStore
from ratelimit.fair_share import Ask
from ratelimit.limits import MAX_COST, NOTHING, Cost, Decision, Limits, LimitState
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


def checked(cost: Cost) -> Cost:
    """``cost`` if the stores can count it; ValueError for a negative one or one past MAX_COST
    (request validation keeps every real request far below it)."""
    if not (0 <= cost.requests <= MAX_COST and 0 <= cost.tokens <= MAX_COST):
        raise ValueError(f"a cost must be between 0 and {MAX_COST} (got {cost})")
    return cost


def clamped(tokens: int) -> int:
    """Tokens someone else reported (an upstream's usage), brought into ``[0, MAX_COST]``."""
    if 0 <= tokens <= MAX_COST:
        return tokens
    log.warning("token count %d out of range: counted as %d", tokens, min(max(tokens, 0), MAX_COST))
    return min(max(tokens, 0), MAX_COST)


def hashed(key: str) -> str:
    """A budget key that is a secret (an API key), as the store may name it: its SHA-256."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class Limiter:
    """The four limits of one service, evaluated in one store, per budget key.

    With ``hash_keys`` the store only ever sees each key's hash: budgets named by callers' API
    keys must not put those keys in clear into Redis key names (anyone who can list keys would
    read them).
    """

    def __init__(self, limits: Limits, store: Store, hash_keys: bool = False) -> None:
        self.limits = limits
        self.policy = limits.policy()
        self.store = store
        self._name: Callable[[str], str] = hashed if hash_keys else str

    def too_large(self, cost: Cost) -> LimitState | None:
        return self.policy.too_large(cost)

    async def acquire(self, key: str, cost: Cost, fair: Ask | None = None) -> Decision:
        if fair is None:
            return await self.store.acquire(self._name(key), self.policy, checked(cost))
        return await self.store.acquire(self._name(key), self.policy, checked(cost), fair)

    async def charge(self, key: str, tokens: int) -> Decision:
        """Consume ``tokens`` (usage above the estimate), clamped to ``[0, MAX_COST]``."""
        return await self.store.charge(self._name(key), self.policy, Cost(0, clamped(tokens)))

    async def refund(
        self, key: str, tokens: int, admitted_at_ms: int, requests: int = 0, fair: Ask | None = None
    ) -> Decision:
        """Return ``tokens`` (and ``requests``, and with ``fair`` its tenant's share) of an
        admission made at ``admitted_at_ms``."""
        if fair is not None:
            return await self.store.refund(
                self._name(key), self.policy, clamped(tokens), admitted_at_ms, clamped(requests), fair
            )
        if requests:
            return await self.store.refund(
                self._name(key), self.policy, clamped(tokens), admitted_at_ms, clamped(requests)
            )
        return await self.store.refund(self._name(key), self.policy, clamped(tokens), admitted_at_ms)

    async def peek(self, key: str, cost: Cost = NOTHING) -> Decision:
        return await self.store.peek(self._name(key), self.policy, checked(cost))

    async def reset(self, key: str) -> None:
        await self.store.reset(self._name(key))


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
