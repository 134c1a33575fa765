"""Keeping our budget in step with the upstream's: usage settled (the upstream's own figures are
followed in ``following``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from apim_server.budget import Budget
from apim_server.metrics import Metrics
from ratelimit.limiter import clamped
from ratelimit.limits import Decision

if TYPE_CHECKING:
    from apim_server.admission import TenantCharge

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

    @staticmethod
    def actual(usage: Mapping[str, Any] | None) -> int | None:
        """The tokens ``usage`` reports, as the stores count them (what ``settle`` returns)."""
        actual = None if usage is None else total_tokens(usage)
        # An upstream's figure is not ours to trust: a negative or absurd one is brought into
        # what the stores count (and logged there).
        return None if actual is None else clamped(actual)

    def touches_store(self, estimate: int, actual: int | None) -> bool:
        """Whether settling ``actual`` tokens (``actual(usage)``) against ``estimate`` asks the
        store (else ``settle`` runs to its end without suspending: nothing can cancel it)."""
        return actual is not None and (actual > estimate or (self.refund_unused and actual < estimate))

    async def settle(
        self,
        budget: Budget,
        estimate: int,
        decision: Decision,
        usage: Mapping[str, Any] | None,
        charge: TenantCharge | None = None,
    ) -> int | None:
        """Charge usage above ``estimate`` (or refund below it, opt-in) to the budget and to the
        tenant's sub-limits (``charge``); the actual tokens."""
        actual = self.actual(usage)
        if actual is None:
            return None
        self.metrics.tokens_used.inc(actual)
        self.metrics.estimate_error.observe(estimate - actual)
        try:
            if actual > estimate:
                await budget.charge(actual - estimate)
                self._excess.inc(actual - estimate)
                if charge is not None:
                    await charge.excess(actual - estimate)
            elif self.refund_unused and actual < estimate:
                await budget.refund(estimate - actual, decision.now_ms)
                self._unused.inc(estimate - actual)
                if charge is not None:
                    await charge.give_back(0, estimate - actual)
        except Exception:
            log.exception("could not settle usage with the limiter store")
        return actual
