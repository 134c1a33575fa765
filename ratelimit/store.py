"""The storage interface every limiter backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from ratelimit.limits import NOTHING, Cost, Decision, LimitState, Policy

Clock = Callable[[], int]
"""Milliseconds since the epoch; injected by tests, otherwise the store's own time."""

TRIM_MAX = 100
"""Expired entries removed per write: bounds the work of one call after a quiet spell."""


class Store(ABC):
    """Atomic, all-or-nothing admission of a cost against every limit of a policy.

    Every method names a ``key`` (one budget: an API key, an upstream) and the ``policy``
    to evaluate it under; stores keep no configuration of their own.
    """

    kind: str

    @abstractmethod
    async def acquire(self, key: str, policy: Policy, cost: Cost) -> Decision:
        """Consume ``cost`` if it fits every limit now; otherwise consume nothing and
        say how long until it would fit."""

    @abstractmethod
    async def peek(self, key: str, policy: Policy, cost: Cost = NOTHING) -> Decision:
        """Evaluate ``cost`` without consuming it: the usage snapshot, and in ``allowed``
        whether ``cost`` would be admitted now."""

    @abstractmethod
    async def charge(self, key: str, policy: Policy, cost: Cost) -> Decision:
        """Consume ``cost`` unconditionally: usage that turned out above the estimate."""

    @abstractmethod
    async def refund(self, key: str, policy: Policy, tokens: int, admitted_at_ms: int) -> Decision:
        """Return unused tokens of an admission made at ``admitted_at_ms`` (opt-in mode)."""

    @abstractmethod
    async def reset(self, key: str) -> None:
        """Forget everything about ``key``."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the store can serve requests now."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def decode(policy: Policy, raw: list[int]) -> Decision:
    """Build a Decision from the flat list both stores produce."""
    names = policy.limit_names()
    limits = policy.limit_values()
    states = tuple(
        LimitState(name, limit, int(raw[3 + i * 3]), int(raw[4 + i * 3]), int(raw[5 + i * 3]))
        for i, (name, limit) in enumerate(zip(names, limits, strict=True))
    )
    return Decision(bool(raw[0]), int(raw[1]), int(raw[2]), states)


def args(
    policy: Policy, op: str, cost: Cost, now_ms: int | None, day_ref_ms: int, admitted_at_ms: int = 0
) -> list[int | str]:
    """The argument vector of one operation (ARGV of lua/limiter.lua)."""
    out: list[int | str] = [
        op,
        "" if now_ms is None else now_ms,
        cost.requests,
        cost.tokens,
        admitted_at_ms,
        TRIM_MAX,
        *policy.day_bounds(day_ref_ms),
        policy.daily_requests,
        policy.daily_tokens,
        len(policy.windows),
    ]
    for w in policy.windows:
        out += [w.length_ms, w.requests, w.tokens]
    return out
