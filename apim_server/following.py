"""Following the upstream's own figures: when an answer's ``x-ratelimit-*`` headers say the
upstream allows less than a budget is configured for, the budget is evaluated under the
upstream's figure (never above the configured limit) until the figures recover.

Two kinds of evidence, per minute limit (RPM, TPM), each a *level* the budget's record is
evaluated under (same store key: nothing already admitted is forgotten):

- ``limit``: the upstream's ``x-ratelimit-limit-*`` below the configured limit (Azure lowers a
  deployment's TPM for hours). Followed from the first answer that reports it; it ends when an
  answer reports the configured limit again, or lapses ``LIMIT_HOLD_MS`` after the last answer
  that confirmed it.
- ``room``: the upstream's ``x-ratelimit-remaining-*`` below what our record leaves (someone else
  spends the key, or an upstream that sends no limit header lowered it). The level is the limit
  under which our record leaves exactly what the upstream says is left: its remaining plus our
  usage. A level rather than a charge of the gap: every answer that reports the same gap sets
  the same level, so nothing is counted twice, however many answers or instances see it; and
  the level rises (slowly: ``Tracker.saw_room``) with the upstream's figures as the other
  spending leaves its window. It lapses one window after the last answer that confirmed it
  (what was spent has left the window by then). A rate-limit 429 with nothing left says only
  that the upstream is full, not by how much: its ``retry-after`` does, through our own record
  (``_fitting``).

Our usage in that sum must include everything the upstream had counted of ours, or a gap appears
that is only our own admissions overtaking each other on the way. So a gap is first measured
against our latest local view; with a shared store, one another instance may have added to since,
it is then confirmed against a fresh read of the record (in the background, at most one at a time
per budget) before the level drops. A capacity 429 (the upstream overloaded) is not evidence.

A ``follow_levels.Tracker`` keeps one budget's levels; this module reads the answers, confirms
gaps, shares levels and shows them. Shared: levels go to a small hash beside the budget's record
(``follow_record``); every instance reads the hashes of its active budgets every ``POLL_S``. Said
once in the log when a budget starts following and once when it is back; shown in ``/status``
and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from apim_server import follow_levels
from apim_server.budget import Budget
from apim_server.config_file import ANY_MODEL
from apim_server.follow_levels import NAMES, Tracker, agreeing_within
from apim_server.follow_record import FollowRecords
from apim_server.metrics import Metrics
from apim_server.upstream import retry_wait_s
from openai_wire.headers import read_ratelimit
from ratelimit.limits import Cost, Decision
from ratelimit.redis_store import RedisStore
from ratelimit.store import Store

log = logging.getLogger("apim.following")

POLL_S = 1.0
"""How often an instance reads the shared levels of its active budgets."""
CONFIRM_EVERY_S = 0.05
"""At most one fresh read of a budget's record per this long to confirm a suspected gap."""
ACTIVE_S = 120.0
"""A budget admitted on within this long is polled every tick; the others a few at a time."""
IDLE_PER_TICK = 32


@dataclasses.dataclass(slots=True)
class _Suspect:
    """A gap seen against our local view, to confirm against a fresh read of the record."""

    kind: str
    remaining: int
    own: int  # what this request cost, when the upstream refused it (not counted there)
    reset_s: float | None


class Following:
    """Every budget's tracker, the shared record, the poll, and what ``/metrics`` shows of them."""

    def __init__(
        self,
        budgets: list[Budget],
        store: Store,
        metrics: Metrics,
        on_raise: Callable[[Budget], None] | None = None,
    ) -> None:
        self.trackers = {id(b): Tracker(b) for b in budgets}
        self.on_raise = on_raise  # a budget's limits rose: its pool asks it again
        self.records = FollowRecords(store) if isinstance(store, RedisStore) else None
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._poll: asyncio.Task[None] | None = None
        self._idle_from = 0
        self._failing = False
        r = metrics.registry
        self.episodes = Counter(
            "apim_budget_following_episodes",
            "Times a budget started following the upstream's lower figures",
            ["deployment", "model"],
            registry=r,
        )
        self.capacity_429 = Counter(
            "apim_upstream_capacity_429",
            "Upstream 429s about its own load (capacity, overloaded): waited out, never followed",
            ["deployment"],
            registry=r,
        )
        self.gap_pauses = metrics.drift_pauses
        self.drift = {kind: metrics.drift.labels(limit=kind) for kind in NAMES}
        r.register(_Figures(self))

    # -- answers ----------------------------------------------------------------------------

    def observe(
        self,
        budget: Budget,
        headers: Mapping[str, str],
        decision: Decision,
        model: str,
        refused: Cost | None = None,
    ) -> None:
        """Compare one upstream answer's figures with ours: ``decision`` is the one the request
        was admitted under, ``model`` the one it asked for; ``refused`` is its cost when the
        upstream answered it with a rate-limit 429 (so did not count it)."""
        figures = read_ratelimit(headers)
        tracker = self.trackers.get(id(budget))
        if not figures or tracker is None:
            return
        owner = model if budget.model == ANY_MODEL else budget.model
        now_ms = follow_levels.now_ms()
        changed = False
        suspects: list[_Suspect] = []
        # Our latest view: everything this instance had admitted when the answer came.
        last = budget.last_decision
        latest = last if last is not None and last.now_ms >= decision.now_ms else decision
        following = tracker.effective != tracker.configured or tracker.any_level(now_ms)
        for kind, figure in figures.items():
            name = NAMES[kind]
            configured = tracker.configured_value(name)
            if not configured:
                continue  # a limit the budget does not keep is not taken up from the upstream
            if figure.limit is not None and (following or figure.limit < configured):
                changed |= tracker.saw_limit(name, figure.limit, owner, now_ms)
            if figure.remaining is None:
                continue
            at_admission = decision.state(f"{kind}/minute")
            self.drift[kind].set(figure.remaining - at_admission.remaining)
            used = max(at_admission.used, latest.state(f"{kind}/minute").used)
            own = 0 if refused is None else refused.requests if kind == "requests" else refused.tokens
            level_for = figure.remaining + used - own
            if not following and not changed and level_for >= configured - agreeing_within(configured):
                tracker.gaps[name] = 0  # the usual answer: nothing to follow, nothing followed
                continue
            rising = figure.remaining + tracker.counted(at_admission.used) - own
            verdict = tracker.saw_room(name, level_for, owner, now_ms, confirmed=False, rising=rising)
            changed |= verdict == "changed"
            if verdict == "suspect":
                suspects.append(_Suspect(kind, figure.remaining, own, figure.reset_s))
        if suspects and self.records is None and refused is None:
            # One instance: our latest view is the record's, nothing to read again.
            levels = {s.kind: s.remaining + latest.state(f"{s.kind}/minute").used for s in suspects}
            changed |= self._confirmed(tracker, suspects, levels, owner, now_ms, refused=False)
        elif suspects:
            # When a refusal says when it would fit, that says how full the upstream is.
            said = refused is not None and ("retry-after-ms" in headers or "retry-after" in headers)
            self._check(tracker, suspects, owner, refused, retry_wait_s(headers) if said else None)
        if changed:
            self._changed(tracker, now_ms)
        elif tracker.pending:
            self._flush(tracker)

    def capacity(self, budget: Budget) -> None:
        """An upstream 429 about its own load: counted; its figures are not evidence."""
        self.capacity_429.labels(deployment=budget.deployment.name).inc()

    def _confirmed(
        self,
        tracker: Tracker,
        suspects: list[_Suspect],
        levels: dict[str, int],
        owner: str,
        now_ms: int,
        refused: bool,
    ) -> bool:
        """Take up the confirmed ``levels`` (kind -> level) of the suspected gaps."""
        changed = False
        for suspect in suspects:
            name = NAMES[suspect.kind]
            if tracker.saw_room(name, levels[suspect.kind], owner, now_ms, confirmed=True) != "changed":
                continue
            changed = True
            if suspect.remaining == 0 and not refused:
                # Nothing left upstream while we counted room: also wait for its reset (a 429
                # has paused the budget already).
                wait_s = tracker.budget.unknown_reset_s if suspect.reset_s is None else suspect.reset_s
                if wait_s > 0:
                    tracker.budget.pause(wait_s)
                    self.gap_pauses.inc()
        return changed

    def _check(
        self,
        tracker: Tracker,
        suspects: list[_Suspect],
        owner: str,
        refused: Cost | None,
        fits_in_s: float | None,
    ) -> None:
        """Confirm a gap against a fresh read of the record, in the background: at most one at a
        time per budget and one per ``CONFIRM_EVERY_S``, but a refusal's always (one at a time)."""
        if fits_in_s is not None:
            if tracker.bisecting:
                return
            tracker.bisecting = True
        elif tracker.checking or time.monotonic() - tracker.checked_at < CONFIRM_EVERY_S:
            return
        else:
            tracker.checking = True
            tracker.checked_at = time.monotonic()
        budget = tracker.budget

        async def check() -> None:
            levels = {}
            try:
                fresh = await budget.peek()
                for suspect in suspects:
                    used = fresh.state(f"{suspect.kind}/minute").used
                    levels[suspect.kind] = suspect.remaining + used - suspect.own
                    if refused is not None and suspect.remaining == 0 and fits_in_s is not None:
                        levels[suspect.kind] = await _fitting(budget, suspect.kind, refused, fits_in_s)
            except Exception as exc:  # noqa: BLE001 - the store's health owner says it; a gap can wait
                log.debug("could not read %s to confirm a gap: %s", budget.name, exc)
                return
            finally:
                if fits_in_s is not None:
                    tracker.bisecting = False
                else:
                    tracker.checking = False
            now_ms = follow_levels.now_ms()
            if self._confirmed(tracker, suspects, levels, owner, now_ms, refused is not None):
                self._changed(tracker, now_ms)

        self._spawn(check())

    def _changed(self, tracker: Tracker, now_ms: int) -> None:
        was = tracker.following_since
        if tracker.apply(now_ms) and self.on_raise is not None:
            self.on_raise(tracker.budget)
        if was is None and tracker.following_since is not None:
            self.episodes.labels(deployment=tracker.budget.deployment.name, model=tracker.budget.model).inc()
        self._flush(tracker)

    # -- sharing ----------------------------------------------------------------------------

    def _flush(self, tracker: Tracker) -> None:
        if self.records is None:
            tracker.pending.clear()
            return
        if tracker.flushing or not tracker.pending:
            return
        tracker.flushing = True
        records = self.records

        async def flush() -> None:
            try:
                while tracker.pending:
                    fields, tracker.pending = tracker.pending, {}
                    await records.write(tracker.budget.key, fields)
                    now = time.monotonic()
                    for field in fields:
                        tracker.written[field] = now
            except Exception as exc:  # noqa: BLE001 - shared on the next change or refresh
                self._store_failed(exc)
            finally:
                tracker.flushing = False

        self._spawn(flush())

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _store_failed(self, exc: BaseException) -> None:
        if not self._failing:
            log.warning("could not share the upstream's figures through the store: %s", exc)
        self._failing = True

    def _polled(self) -> list[Tracker]:
        """The budgets to read this tick: the active ones, and a few idle ones in turn."""
        now = time.monotonic()
        active, idle = [], []
        for tracker in self.trackers.values():
            last = tracker.budget.last_decision
            recent = last is not None and now - last.asked_at < ACTIVE_S
            (active if recent or tracker.following_since is not None else idle).append(tracker)
        if len(idle) > IDLE_PER_TICK:
            start = self._idle_from % len(idle)
            self._idle_from = start + IDLE_PER_TICK
            idle = (idle[start:] + idle[:start])[:IDLE_PER_TICK]
        return active + idle

    async def tick(self) -> None:
        """Take the levels other instances shared, and let lapsed ones go."""
        if self.records is not None:
            polled = self._polled()
            try:
                stored = await self.records.read(t.budget.key for t in polled)
            except Exception as exc:  # noqa: BLE001
                self._store_failed(exc)
            else:
                self._failing = False
                for tracker in polled:
                    tracker.merge(stored.get(tracker.budget.key, {}))
        now_ms = follow_levels.now_ms()
        for tracker in self.trackers.values():
            self._changed(tracker, now_ms)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.tick()
            except Exception:  # never let the poll die
                log.exception("following the upstream's figures: tick failed")

    def start(self) -> None:
        self._poll = asyncio.get_running_loop().create_task(self._run(), name="apim-following")

    async def drain(self) -> None:
        """Until the background reads and writes started so far are done."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        for task in list(self._tasks):
            task.cancel()

    # -- views ------------------------------------------------------------------------------

    def status(self, budget: Budget) -> dict[str, Any] | None:
        """``/status``'s view of one budget: None unless it follows the upstream now."""
        tracker = self.trackers.get(id(budget))
        if tracker is None or tracker.following_since is None:
            return None
        now_ms = follow_levels.now_ms()
        return {
            "since": round(tracker.following_since, 3),
            "for_s": round(time.time() - tracker.following_since, 3),
            "limits": tracker.limits(now_ms),
        }


async def _fitting(budget: Budget, kind: str, cost: Cost, fits_in_s: float) -> int:
    """The least limit of ``kind`` under which our record admits ``cost`` within ``fits_in_s``.

    An upstream that refused a request with nothing left and "retry after ``fits_in_s``" allows
    no more than that (as far as it counts our admissions, which leave its window as they leave
    ours): its remaining, clamped at 0, only says it is full, not by how much. Found by bisection
    over peeks of our record (a rate-limit 429 is rare; each peek costs one store call). A wait
    past one window (a daily quota) says nothing of the minute's limit: no lower level then.
    """
    name = NAMES[kind]
    limits = budget.limiter.limits
    high = getattr(limits, name)
    window_ms = limits.policy().windows[0].length_ms
    wait_ms = fits_in_s * 1000
    if wait_ms >= window_ms:
        return high
    low = max(1, cost.requests if kind == "requests" else cost.tokens)
    while low < high:
        middle = (low + high) // 2
        # On the upstream's own window: ours is longer by the margin, and what it still holds
        # of the margin's band the upstream has let go.
        policy = dataclasses.replace(limits, margin_ms=0, **{name: middle}).policy()
        state = (await budget.limiter.store.peek(budget.key, policy, cost)).state(f"{kind}/minute")
        if state.wait_ms <= wait_ms:
            high = middle
        else:
            low = middle + 1
    return low


class _Figures(Collector):
    """Configured and enforced limits, whether a budget follows, and the latest gap, per budget."""

    def __init__(self, following: Following) -> None:
        self.following = following

    def collect(self) -> Iterator[GaugeMetricFamily]:
        limit = GaugeMetricFamily(
            "apim_budget_limit",
            "A budget's per-minute limit: `configured`, and `effective` (lower while it follows the "
            "upstream's figures)",
            labels=["deployment", "model", "limit", "source"],
        )
        following = GaugeMetricFamily(
            "apim_budget_following",
            "1 while a budget follows the upstream's lower figures (limit or remaining), else 0",
            labels=["deployment", "model"],
        )
        gap = GaugeMetricFamily(
            "apim_budget_gap",
            "Our remaining minus the upstream's, at its latest answer (>0: the upstream has less left "
            "than our record says)",
            labels=["deployment", "model", "limit"],
        )
        for tracker in self.following.trackers.values():
            labels = [tracker.budget.deployment.name, tracker.budget.model]
            following.add_metric(labels, 0.0 if tracker.following_since is None else 1.0)
            for name in NAMES.values():
                configured = tracker.configured_value(name)
                if not configured:
                    continue
                limit.add_metric([*labels, name, "configured"], float(configured))
                limit.add_metric([*labels, name, "effective"], float(getattr(tracker.effective, name)))
                if name in tracker.gaps:
                    gap.add_metric([*labels, name], float(tracker.gaps[name]))
        yield from (limit, following, gap)
