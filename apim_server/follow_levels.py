"""The levels one budget follows, from the upstream's figures, and the limits they make it
enforce (see ``following`` for where the figures come from and how levels are shared).

Per minute limit (RPM, TPM), two kinds of level: ``limit`` (the upstream's own reported limit:
a request above it can never pass) and ``room`` (what its remaining leaves: down at once, up
slowly). The budget enforces the least of them and its configured limit.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from apim_server.budget import Budget
from apim_server.follow_record import Level

log = logging.getLogger("apim.following")

LIMIT_HOLD_MS = 10 * 60_000
"""A lower limit the upstream reported lapses this long after the last answer that confirmed it
(the upstream lowers limits for hours; while traffic flows, every answer confirms it)."""
REFRESH_S = 5.0
"""How often a level that answers keep confirming is written again (its lapse pushed back)."""
RISE_S = 2.0
"""A room level rises to the least level the answers said over this long (see ``saw_room``)."""
EVIDENCE_KEPT = 512
NAMES = {"requests": "rpm", "tokens": "tpm"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_monotonic = time.monotonic
"""The clock evidence is timed with (a test steps its own)."""


def agreeing_within(limit: int) -> int:
    """How far the upstream's figure may sit below ours and still count as agreeing (rounding,
    a token counted differently): a thousandth of the limit."""
    return limit // 1000


class Tracker:
    """One budget's levels, and the limits they make it enforce."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.configured = budget.configured
        self.room_hold_ms = self.configured.policy().windows[0].length_ms
        # The share of our window the upstream's covers: ours is longer by the margin, so our
        # usage holds a band of admissions the upstream has let go (``counted``).
        self.upstream_share = (self.room_hold_ms - self.configured.margin_ms) / self.room_hold_ms
        self.levels: dict[str, Level] = {}
        self.effective = self.configured
        self.hard = self.configured
        self.following_since: float | None = None  # wall clock
        self.gaps: dict[str, int] = {}  # limit name -> latest gap (our remaining minus the upstream's)
        self.pending: dict[str, Level] = {}  # fields to write to the shared record
        self.written: dict[str, float] = {}  # field -> monotonic time last written
        self.checking = False  # a fresh read confirming a gap is under way
        self.checked_at = 0.0
        self.bisecting = False  # the level a refusal implies is being found
        self.flushing = False
        self.evidence: dict[str, deque[tuple[float, int]]] = {}  # limit name -> (monotonic, level said)

    def any_level(self, now_ms: int) -> bool:
        """Whether any level is in force (the budget may not enforce it yet: one taken from the
        record, or lapsed, waits for the next ``apply``)."""
        return any(level.active(now_ms) for level in self.levels.values())

    def counted(self, used: int) -> int:
        """What the upstream still counts of ``used`` (our usage over our longer window), taking
        the margin's band as average: a level rises only to what that leaves, so that a band that
        happened to be full when the evidence was read does not let later admissions overshoot."""
        return round(used * self.upstream_share)

    def configured_value(self, name: str) -> int:
        return int(getattr(self.configured, name))

    def _active(self, field: str, now_ms: int) -> Level | None:
        level = self.levels.get(field)
        return level if level is not None and level.active(now_ms) else None

    def hard_value(self, name: str, now_ms: int) -> int:
        """The limit a request can never pass: configured, or the upstream's reported one below it."""
        value = self.configured_value(name)
        level = self._active(f"{name}.limit", now_ms)
        return min(value, level.value) if level is not None and level.value is not None else value

    def value(self, name: str, now_ms: int) -> int:
        value = self.hard_value(name, now_ms)
        level = self._active(f"{name}.room", now_ms)
        return min(value, level.value) if level is not None and level.value is not None else value

    # -- evidence ---------------------------------------------------------------------------

    def _set(self, field: str, value: int | None, model: str, now_ms: int, hold_ms: int) -> None:
        if value is not None:
            value = max(1, value)  # 0 would read as "no limit": one a minute is the least there is
        old = self._active(field, now_ms)
        since = old.since_ms if old is not None and value is not None else now_ms
        level = Level(value, model, since, now_ms, now_ms + hold_ms if value is not None else now_ms)
        self.levels[field] = self.pending[field] = level

    def _confirm(self, field: str, level: Level, now_ms: int, hold_ms: int) -> None:
        level.updated_ms = now_ms
        level.until_ms = now_ms + hold_ms
        if time.monotonic() - self.written.get(field, 0.0) >= REFRESH_S:
            self.pending[field] = level

    def saw_limit(self, name: str, figure: int, model: str, now_ms: int) -> bool:
        """The upstream reported ``figure`` as its limit; True if the level changed."""
        field = f"{name}.limit"
        current = self._active(field, now_ms)
        if figure >= self.configured_value(name):
            if current is not None and current.model == model:
                self._set(field, None, model, now_ms, 0)
                return True
            return False
        if current is not None and current.value == figure:
            self._confirm(field, current, now_ms, LIMIT_HOLD_MS)
            return False
        if (
            current is not None
            and current.value is not None
            and current.model != model
            and figure > current.value
        ):
            return False  # another model's answers hold a lower level (one budget serving many models)
        self._set(field, figure, model, now_ms, LIMIT_HOLD_MS)
        return True

    def saw_room(
        self, name: str, level_for: int, model: str, now_ms: int, confirmed: bool, rising: int | None = None
    ) -> str:
        """The upstream's remaining plus our usage is ``level_for`` (``confirmed``: against a
        fresh read of the record): "changed", "suspect" (lower: confirm it first), or "".

        Down at once (once confirmed), judged with our latest usage (which overstates what the
        upstream had counted of ours, so it never drops for nothing). Up only slowly, judged with
        the usage the request was admitted under (``rising``; what others of ours admitted after
        it may not have reached the upstream yet), to the least any answer of the model said over
        the last ``RISE_S``, once that evidence spans half of it: a burst's first answers
        overstate the room most."""
        hard = self.hard_value(name, now_ms)
        tolerance = agreeing_within(hard)
        self.gaps[name] = max(0, self.value(name, now_ms) - level_for)
        field = f"{name}.room"
        current = self._active(field, now_ms)
        level = self.value(name, now_ms)
        if level_for < level - tolerance:
            if not confirmed:
                return "suspect"
            self._set(field, level_for, model, now_ms, self.room_hold_ms)
            self.evidence.pop(name, None)  # what was said before the drop says nothing after it
            return "changed"
        if current is None or current.value is None or current.model != model or confirmed:
            if current is not None and confirmed and abs(level_for - level) <= tolerance:
                self._confirm(field, current, now_ms, self.room_hold_ms)
            return ""
        settled = self._settled(name, level_for if rising is None else min(rising, level_for))
        if abs(level_for - current.value) <= tolerance or 0 <= settled <= current.value + tolerance:
            self._confirm(field, current, now_ms, self.room_hold_ms)
            return ""
        if settled < 0:
            return ""
        # ``rising`` counts only what the upstream's shorter window holds: so is the limit it meets.
        back = settled >= self.counted(hard) - tolerance
        self._set(field, None if back else settled, model, now_ms, self.room_hold_ms)
        return "changed"

    def _settled(self, name: str, level_for: int) -> int:
        """The least level answers said over the last ``RISE_S`` (``level_for`` included), or
        ``-1`` while that evidence spans less than half of it."""
        now = _monotonic()
        said = self.evidence.setdefault(name, deque(maxlen=EVIDENCE_KEPT))
        said.append((now, level_for))
        while said and said[0][0] < now - RISE_S:
            said.popleft()
        if now - said[0][0] < RISE_S / 2:
            return -1
        return min(value for _, value in said)

    def merge(self, stored: Mapping[str, Level]) -> None:
        """Take every stored field newer than ours (another instance saw it)."""
        for field, level in stored.items():
            mine = self.levels.get(field)
            if field in NAMES_FIELDS and (mine is None or level.updated_ms > mine.updated_ms):
                self.levels[field] = level

    # -- what the budget enforces -----------------------------------------------------------

    def apply(self, now_ms: int) -> bool:
        """Make the budget enforce the levels in force now; say so when that starts and ends.
        True when a limit rose (what the budget said about waiting requests no longer holds)."""
        values = {name: self.value(name, now_ms) for name in NAMES.values() if self.configured_value(name)}
        hards = {name: self.hard_value(name, now_ms) for name in values}
        effective = dataclasses.replace(self.configured, **values)
        hard = dataclasses.replace(self.configured, **hards)
        if effective == self.effective and hard == self.hard:
            return False
        rose = any(getattr(effective, name) > getattr(self.effective, name) for name in values)
        self.effective, self.hard = effective, hard
        self.budget.enforce(effective, hard)
        if effective != self.configured and self.following_since is None:
            self.following_since = time.time()
            self._say(now_ms)
        elif effective == self.configured and self.following_since is not None:
            log.warning(
                "budget %s is back to its configured limits after %.1fs: the upstream's figures recovered",
                self.budget.name,
                time.time() - self.following_since,
            )
            self.following_since = None
        return rose

    def _say(self, now_ms: int) -> None:
        """The one line that says a budget follows the upstream now (a field per limit, so that
        the log's escaping of values leaves them plain)."""
        clauses, args = [], []
        for name, row in self.limits(now_ms).items():
            kind = "requests" if name == "rpm" else "tokens"
            if row["reason"] == "limit":
                clauses.append("%s %d (configured %d), the upstream's x-ratelimit-limit-%s")
            else:
                clauses.append(
                    "%s %d (configured %d), what the upstream's x-ratelimit-remaining-%s leaves (someone "
                    "else spends the key, or it lowered a limit it does not report)"
                )
            args += [name, row["effective"], row["configured"], kind]
        text = "budget %s follows the upstream's figures: " + "; ".join(clauses)
        log.warning(text, self.budget.name, *args)

    def limits(self, now_ms: int) -> dict[str, dict[str, Any]]:
        """The limits that follow a level now, with their configured value and why."""
        out: dict[str, dict[str, Any]] = {}
        for name in NAMES.values():
            configured = self.configured_value(name)
            value = self.value(name, now_ms)
            if not configured or value >= configured:
                continue
            reason = "limit" if self.hard_value(name, now_ms) == value else "room"
            level = self._active(f"{name}.{reason}", now_ms)
            out[name] = {
                "configured": configured,
                "effective": value,
                "reason": reason,
                "since": None if level is None else level.since_ms / 1000,
                "model": None if level is None else level.model,
            }
        return out


NAMES_FIELDS = frozenset(f"{name}.{source}" for name in NAMES.values() for source in ("limit", "room"))
