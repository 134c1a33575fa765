"""Keeping our budget in step with the upstream's: usage settled, drift detected."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from apim_server.budget import Budget
from apim_server.metrics import Metrics
from apim_server.upstream import remaining_and_reset
from ratelimit.limiter import clamped
from ratelimit.limits import Decision

log = logging.getLogger("apim.accounting")


_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_COUNTS = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d+)')


def usage_of(content: bytes) -> dict[str, Any] | None:
    """The token counts of a chat completion body's ``usage``, if any.

    Found with two regular expressions instead of parsing the whole answer: the three names
    are unique to ``usage`` (its detail objects use other names).
    """
    start = _USAGE.search(content)
    if start is None:
        return None
    counts: dict[str, Any] = {}
    for match in _COUNTS.finditer(content, start.end()):
        counts.setdefault(match[1].decode(), int(match[2]))
        if len(counts) == 3:
            break
    return counts or None


def total_tokens(usage: Mapping[str, Any]) -> int | None:
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    return sum(p for p in parts if isinstance(p, int)) if any(isinstance(p, int) for p in parts) else None


class Accounting:
    """Mirrors the upstream's bookkeeping: the estimate was charged at admission; usage above
    it is charged at once; unused estimate is refunded only in refund mode."""

    def __init__(self, refund_unused: bool, metrics: Metrics) -> None:
        self.refund_unused = refund_unused
        self.metrics = metrics
        self._excess = metrics.tokens_charged.labels(kind="excess")
        self._unused = metrics.tokens_refunded.labels(kind="unused")

    async def settle(
        self, budget: Budget, estimate: int, decision: Decision, usage: Mapping[str, Any] | None
    ) -> int | None:
        """Charge usage above ``estimate`` (or refund below it, opt-in); the actual tokens."""
        if usage is None:
            return None
        actual = total_tokens(usage)
        if actual is None:
            return None
        # An upstream's figure is not ours to trust: a negative or absurd one is brought into
        # what the stores count (and logged there).
        actual = clamped(actual)
        self.metrics.tokens_used.inc(actual)
        self.metrics.estimate_error.observe(estimate - actual)
        try:
            if actual > estimate:
                await budget.charge(actual - estimate)
                self._excess.inc(actual - estimate)
            elif self.refund_unused and actual < estimate:
                await budget.refund(estimate - actual, decision.now_ms)
                self._unused.inc(estimate - actual)
        except Exception:
            log.exception("could not settle usage with the limiter store")
        return actual

    async def check_drift(self, budget: Budget, headers: Mapping[str, str], decision: Decision) -> None:
        """Compare the upstream's ``x-ratelimit-remaining-*`` with ours; pause on real drift.

        The upstream saying 0 is normal when we fill the budget exactly; it only means drift
        (others share the upstream, or costs differ) when our own view still has room. Then we
        pause until the upstream's reset; otherwise our limiter is already waiting correctly and
        a pause would waste budget.
        """
        pairs = remaining_and_reset(headers, budget.unknown_reset_s)
        if not pairs:
            return
        exhausted = []
        for kind, left, reset in pairs:
            ours = decision.state(f"{kind}/minute")
            if ours.limit:
                self.metrics.drift.labels(limit=kind).set(left - ours.remaining)
            if left == 0 and reset > 0:
                exhausted.append((kind, reset))
        if not exhausted:
            return
        try:
            now = await budget.peek()
        except Exception:
            log.exception("could not read the limiter store to check drift")
            return
        for kind, reset in exhausted:
            ours = now.state(f"{kind}/minute")
            if ours.limit and ours.remaining == 0:
                continue
            log.warning(
                "drift: upstream reports 0 %s remaining for %s while we count %s left; pausing it %.2fs",
                kind,
                budget.name,
                ours.remaining if ours.limit else "no limit",
                reset,
            )
            self.metrics.drift_pauses.inc()
            budget.pause(reset)
