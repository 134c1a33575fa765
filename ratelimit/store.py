"""The storage interface every limiter backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from ratelimit.fair_share import Ask
from ratelimit.limits import NOTHING, Cost, Decision, FairAnswer, LimitState, Policy

Clock = Callable[[], int]
"""Milliseconds since the epoch; injected by tests, otherwise the store's own time."""

READY_KEY = "ready"
"""The budget key a readiness probe looks at when it names none."""

TRIM_MAX = 100
"""Expired entries removed per write: bounds the work of one call after a quiet spell."""


class Store(ABC):
    """Atomic, all-or-nothing admission of a cost against every limit of a policy.

    Every method names a ``key`` (one budget: an API key, an upstream) and the ``policy``
    to evaluate it under; stores keep no configuration of their own.
    """

    kind: str

    @abstractmethod
    async def acquire(self, key: str, policy: Policy, cost: Cost, fair: Ask | None = None) -> Decision:
        """Consume ``cost`` if it fits every limit now; otherwise consume nothing and
        say how long until it would fit. With ``fair``, also keep the budget's fair shares
        across instances (``ratelimit.fair_share``): the admission may yield instead."""

    @abstractmethod
    async def peek(self, key: str, policy: Policy, cost: Cost = NOTHING) -> Decision:
        """Evaluate ``cost`` without consuming it: the usage snapshot, and in ``allowed``
        whether ``cost`` would be admitted now."""

    @abstractmethod
    async def charge(self, key: str, policy: Policy, cost: Cost) -> Decision:
        """Consume ``cost`` unconditionally: usage that turned out above the estimate."""

    @abstractmethod
    async def refund(
        self,
        key: str,
        policy: Policy,
        tokens: int,
        admitted_at_ms: int,
        requests: int = 0,
        fair: Ask | None = None,
    ) -> Decision:
        """Return unused tokens (and ``requests``: an admission given back whole) of an
        admission made at ``admitted_at_ms``: pass the admission's ``Decision.now_ms``. The
        refund leaves the sliding window together with that admission, and comes off the day
        only if it was made today. Returned requests count out of the longest window and the
        day; a shorter window still counts them until they leave it (stricter, never over).
        With ``fair`` (an admission made with that ask was not served), its tenant's finish tag
        comes down by ``fair.share`` again.

        While refunds are in the window a denial's ``wait_ms`` is a lower bound, not exact:
        a refund leaving with its admission frees less than the admission's full cost, so
        the caller may be told to wait once more."""

    @abstractmethod
    async def reset(self, key: str) -> None:
        """Forget everything about ``key``."""

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the store answers at all (see ``ready`` for whether it can admit)."""

    async def ready(self, key: str = READY_KEY) -> bool:
        """Whether an admission for ``key`` could succeed now (what ``/readyz`` reports)."""
        return await self.ping()

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def labels(policy: Policy) -> tuple[tuple[str, int], ...]:
    """Each limit's name and value, in the order of the flat result."""
    memo = policy._memo
    found = memo.get("labels")
    if found is None:
        found = memo["labels"] = tuple(zip(policy.limit_names(), policy.limit_values(), strict=True))
    return found


def decode(policy: Policy, raw: list[int], asked_at: float = 0.0) -> Decision:
    """Build a Decision from the flat list both stores produce (integers already: Redis
    answers a script's numbers as integers); ``asked_at`` is when the store was asked
    (``time.monotonic()``)."""
    names = labels(policy)
    end = 3 + 3 * len(names)
    states = tuple(
        [
            LimitState(name, limit, raw[i], raw[i + 1], raw[i + 2])
            for i, (name, limit) in zip(range(3, end, 3), names, strict=True)
        ]
    )
    if len(raw) > end:  # a fair-share ask's answer: yielded, finish tag, virtual clock, tags
        fair = FairAnswer(bool(raw[end]), raw[end + 1], raw[end + 2], tuple(raw[end + 3 :]))
        return Decision(bool(raw[0]), raw[1], raw[2], states, asked_at, fair)
    return Decision(bool(raw[0]), raw[1], raw[2], states, asked_at)


def spec(policy: Policy, day_ref_ms: int) -> str:
    """The policy part of the argument vector: trim_max, the four day bounds around
    ``day_ref_ms``, the daily limits, the window count, then length and limits per window.

    Comma-separated (a JSON array's inside), rebuilt only when the day changes.
    """
    memo = policy._memo
    found = memo.get("spec")
    if found is not None and found[0] <= day_ref_ms < found[1]:
        return found[2]
    bounds = policy.day_bounds(day_ref_ms)
    parts = [TRIM_MAX, *bounds, policy.daily_requests, policy.daily_tokens, len(policy.windows)]
    for w in policy.windows:
        parts += [w.length_ms, w.requests, w.tokens]
    text = ",".join(map(str, parts))
    memo["spec"] = (bounds[1], bounds[2], text)
    return text


def args(
    policy: Policy, op: str, cost: Cost, now_ms: int | None, day_ref_ms: int, admitted_at_ms: int = 0
) -> list[int | str]:
    """The argument vector of one operation: what the embedded store takes, and, as JSON
    (``wire``), the one ARGV of lua/limiter.lua. ``now_ms`` None is server time."""
    return [
        op,
        "-" if now_ms is None else now_ms,
        cost.requests,
        cost.tokens,
        admitted_at_ms,
        spec(policy, day_ref_ms),
    ]


def wire(argv: list[int | str], fair: Ask | None = None) -> str:
    """The argument vector as lua/limiter.lua takes it: one JSON array. Every part is an
    operation name, an integer, "-" or the comma-separated spec, so no escaping is needed."""
    op, now, requests, tokens, admitted_at, policy_spec = argv
    when = '"-"' if now == "-" else now
    if fair is not None:
        return f'["{op}",{when},{requests},{tokens},{admitted_at},[{policy_spec}],{fair.wire()}]'
    return f'["{op}",{when},{requests},{tokens},{admitted_at},[{policy_spec}]]'
