"""What a limit, a cost and a decision are: the vocabulary shared by every store."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MINUTE_MS = 60_000

# Bounds on what the stores count (lua/limiter.lua holds the same values). One cost is at most
# MAX_COST tokens (above the largest valid request: 128 choices of 2**31 - 1 tokens plus a
# 1 MiB prompt); a window counts at most LIVE_CAP, a day DAY_CAP; running totals are renumbered
# from zero past REBASE_AT. So the log's fixed-width members (15 digits) and Lua's doubles stay
# exact whatever an upstream reports, and no total ever outgrows them.
MAX_COST = 2**40
LIVE_CAP = 10**14
REBASE_AT = 4 * 10**14
DAY_CAP = 10**15


@dataclass(frozen=True, slots=True)
class Cost:
    """What one admission consumes."""

    requests: int = 1
    tokens: int = 0


NOTHING = Cost(0, 0)
"""The cost of a look that consumes nothing."""


@dataclass(frozen=True, slots=True)
class Window:
    """A sliding window: the costs admitted in (now - length, now] never exceed the limits.

    A limit of 0 means "no limit" for that unit.
    """

    name: str
    length_ms: int
    requests: int = 0
    tokens: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """The four provider limits plus optional short-interval enforcement of RPM.

    ``short_window_s`` > 0 also enforces RPM over sub-windows of that many seconds at the
    pro-rated rate, as Azure OpenAI does (RPM 600 with 1 s sub-windows: 10 per second).
    ``margin_ms`` lengthens every sliding window: a gateway uses it so that the jitter between
    its admission and the upstream's own clock never makes the upstream see more than a limit.
    """

    rpm: int = 0
    tpm: int = 0
    rpd: int = 0
    tpd: int = 0
    daily_reset_tz: str = "UTC"
    short_window_s: int = 0
    margin_ms: int = 0

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "rpd", "tpd", "short_window_s", "margin_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.short_window_s and 60 % self.short_window_s:
            raise ValueError("short_window_s must divide 60 (1, 10, ...)")
        ZoneInfo(self.daily_reset_tz)  # fail early on an unknown zone

    def fingerprint(self) -> str:
        """A short digest of everything that shapes this budget's record: limits, zone,
        sub-window, margin. It goes into the budget's store key, so two instances configured
        differently never read or write one record (each would corrupt the other's)."""
        text = (
            f"{self.rpm},{self.tpm},{self.rpd},{self.tpd},{self.daily_reset_tz},"
            f"{self.short_window_s},{self.margin_ms}"
        )
        return hashlib.blake2s(text.encode(), digest_size=5).hexdigest()

    def policy(self) -> Policy:
        windows = [Window("minute", MINUTE_MS + self.margin_ms, self.rpm, self.tpm)]
        if self.short_window_s and self.rpm:
            per = max(1, math.floor(self.rpm * self.short_window_s / 60))
            length = self.short_window_s * 1000 + self.margin_ms
            windows.append(Window(f"{self.short_window_s}s", length, per, 0))
        return Policy(tuple(windows), self.rpd, self.tpd, ZoneInfo(self.daily_reset_tz))


@dataclass(frozen=True, slots=True)
class Policy:
    """The limits in the form the stores evaluate: sliding windows plus one daily window."""

    windows: tuple[Window, ...]
    daily_requests: int
    daily_tokens: int
    tz: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    # What the stores derive from a policy on every call (labels, encoded arguments): kept
    # here so that it is computed once per policy, and once per day for the day bounds.
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    @property
    def longest_ms(self) -> int:
        return max(w.length_ms for w in self.windows)

    def day_bounds(self, now_ms: int) -> tuple[int, int, int, int]:
        """Midnights around ``now_ms``: previous day start, day start, day end, next day end.

        The store picks the day that holds its own clock (Redis server time may differ a
        little from ours), so four bounds cover a skew of up to a day either way.
        """
        local = datetime.fromtimestamp(now_ms / 1000, self.tz)
        start = datetime(local.year, local.month, local.day, tzinfo=self.tz)
        days = [start + timedelta(days=d) for d in (-1, 0, 1, 2)]
        # Rebuild each midnight from its date so DST days come out 23 or 25 hours long.
        return tuple(  # type: ignore[return-value]
            int(datetime(d.year, d.month, d.day, tzinfo=self.tz).timestamp() * 1000) for d in days
        )

    def too_large(self, cost: Cost) -> LimitState | None:
        """The first limit that ``cost`` alone exceeds, so it can never be admitted."""
        for name, limit, amount in self._pairs(cost):
            if limit and amount > limit:
                return LimitState(name, limit, 0, 0, 0)
        return None

    def _pairs(self, cost: Cost) -> list[tuple[str, int, int]]:
        pairs: list[tuple[str, int, int]] = []
        for w in self.windows:
            pairs.append((f"requests/{w.name}", w.requests, cost.requests))
            pairs.append((f"tokens/{w.name}", w.tokens, cost.tokens))
        pairs.append(("requests/day", self.daily_requests, cost.requests))
        pairs.append(("tokens/day", self.daily_tokens, cost.tokens))
        return pairs

    def limit_names(self) -> list[str]:
        return [name for name, _, _ in self._pairs(Cost())]

    def limit_values(self) -> list[int]:
        return [limit for _, limit, _ in self._pairs(Cost())]


@dataclass(frozen=True, slots=True)
class LimitState:
    """One limit as a store sees it after an operation.

    ``used`` includes the cost just admitted; ``wait_ms`` is how long until the requested
    cost would fit (0 when it fits); ``reset_ms`` is how long until ``used`` returns to 0.
    """

    name: str
    limit: int
    used: int
    wait_ms: int
    reset_ms: int

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used) if self.limit else 0


@dataclass(frozen=True, slots=True)
class FairAnswer:
    """What an admission with a fair-share ask (``ratelimit.fair_share``) says besides: it fit
    the limits but a waiting tenant goes first; the tenant's finish tag and the budget's virtual
    clock after it; the finish tags of the other waiting tenants the ask named, in its order."""

    yielded: bool
    finish: int
    vtime: int
    tags: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one store operation: admitted or not, and every limit's state."""

    allowed: bool
    wait_ms: int
    now_ms: int
    states: tuple[LimitState, ...]
    # When the store was asked, on this process's monotonic clock (now_ms is the store's own
    # clock, Redis time): what a lag measured here must start from, never now_ms.
    asked_at: float = field(default=0.0, compare=False)
    # One field, not four: every admission builds a Decision, and each field costs its time.
    fair: FairAnswer | None = None

    @property
    def yielded(self) -> bool:
        return self.fair is not None and self.fair.yielded

    @property
    def finish(self) -> int:
        return 0 if self.fair is None else self.fair.finish

    @property
    def vtime(self) -> int:
        return 0 if self.fair is None else self.fair.vtime

    @property
    def tags(self) -> tuple[int, ...]:
        return () if self.fair is None else self.fair.tags

    def state(self, name: str) -> LimitState:
        for s in self.states:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def binding(self) -> LimitState | None:
        """The limit that waits longest: the one a 429 message names."""
        denied = [s for s in self.states if s.wait_ms > 0]
        return max(denied, key=lambda s: s.wait_ms) if denied else None
