"""The one owner of the limiter store's health, for every pool: reachable or not, and whether a
restart lost the record of the last window (then admission is held once, for the promised time).

Every user of the store reports failures here; only this object decides when admission may
resume, so the dispatchers, ``/status`` and the 503s all tell the same story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import ResponseError

from ratelimit.redis_store import RedisStore
from ratelimit.store import READY_KEY, Store

log = logging.getLogger("apim.store")

RETRY_S = 0.5
"""While the store is unreachable, how often it is asked again."""
WATCH_S = 1.0
"""While it answers, how often the server is checked for a restart (a new run id)."""


class StoreHealth:
    """``down_since`` is set only while the store really fails; ``hold_until`` only after a
    restart that lost the record. ``wait_s`` says which holds admission and for how long."""

    def __init__(
        self,
        store: Store,
        window_s: float,
        record_empty: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.store = store
        self.window_s = window_s
        self.down_since: float | None = None  # monotonic
        self.hold_until = 0.0  # monotonic
        self.hold_reason: str | None = None
        self.record_empty = record_empty  # set by whoever knows the budgets
        self.key = READY_KEY  # a budget's key: its node is the one watched (set with the budgets)
        self._run_id: str | None = None
        self._handled_restart: str | None = None
        self._listeners: set[Callable[[], None]] = set()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the users of the store see -----------------------------------------------------------

    def wait_s(self) -> float | None:
        """None: admit. Otherwise how long admission stays held (inf while the store is down)."""
        if self.down_since is not None:
            return float("inf")
        held = self.hold_until - time.monotonic()
        return held if held > 0 else None

    @property
    def unreachable(self) -> bool:
        return self.down_since is not None

    def listen(self, wake: Callable[[], None]) -> None:
        """``wake`` is called whenever admission may resume (or the hold changes)."""
        self._listeners.add(wake)

    def failed(self, exc: BaseException) -> None:
        """A store call failed: admission is held until this owner sees the store whole again."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.error(
                "limiter store unreachable (%s: %s): admission held, queued requests wait; "
                "retrying every %.1fs",
                type(exc).__name__,
                exc,
                RETRY_S,
            )
            self._changed.set()
        else:
            log.debug("limiter store still unreachable: %s", exc)

    # -- the watch -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name="apim-store-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _watch(self) -> None:
        while True:
            self._changed.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is the store being down
                self.failed(exc)
            period = RETRY_S if self.down_since is not None else WATCH_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), period)

    async def check(self) -> None:
        """One look: does the store answer, did it restart, is its record gone? Raises if down."""
        run_id, uptime_s = await self.server()
        if not await self.store.ready(self.key):
            # Answering is not enough (a replica answers reads): held until a write would succeed.
            raise ConnectionError("the limiter store cannot admit (a replica, or no master for the budget)")
        restarted = self._run_id is not None and run_id is not None and run_id != self._run_id
        if self._run_id is None and self.down_since is not None and uptime_s is not None:
            # First look ever came during an outage: a server younger than the outage restarted.
            restarted = uptime_s <= time.monotonic() - self.down_since + 1
        if run_id is not None:
            self._run_id = run_id
        if restarted and run_id != self._handled_restart and uptime_s is not None:
            self._handled_restart = run_id
            await self._after_restart(uptime_s)
            for wake in self._listeners:
                wake()
        self._recovered()

    async def server(self) -> tuple[str | None, float | None]:
        """The store server's run id and uptime (None, None for the embedded store).

        The one place that asks; on a Redis Cluster, the node that owns the watched budget.
        """
        if not isinstance(self.store, RedisStore):
            return None, None
        try:
            server = await self.store.server(self.key)
        except ResponseError:
            return None, None  # INFO refused (an ACL): no restart detection, but not an outage
        return server.run_id, server.uptime_s

    async def _after_restart(self, uptime_s: float) -> None:
        empty = True if self.record_empty is None else await self.record_empty()
        if not empty:
            log.warning("the limiter store restarted and kept its record (persistence): nothing to hold")
            return
        # Nothing can have been admitted on the lost record after the server went down, which was
        # before it started again: one window after that start, the upstream's window is clear.
        until = time.monotonic() - uptime_s + self.window_s
        hold = until - time.monotonic()
        if hold > 0 and until > self.hold_until:
            self.hold_until = until
            self.hold_reason = "the limiter store restarted empty: waiting for the upstream's window to clear"
            log.warning(
                "the limiter store restarted empty (its record of the last window is lost): admission "
                "held %.1fs so that the upstream's window clears; give Redis persistence (appendonly "
                "yes) to avoid this",
                hold,
            )

    def _recovered(self) -> None:
        if self.down_since is None:
            return
        log.warning(
            "limiter store reachable again after %.1fs: admission resumes",
            time.monotonic() - self.down_since,
        )
        self.down_since = None
        for wake in self._listeners:
            wake()
