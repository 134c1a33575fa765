"""Deadlines of waiting requests: one timer per pool instead of one per request.

A waiting request is kept in a bucket of ``BUCKET_S`` by its deadline (rounded up), so it costs
a set entry rather than a timer handle and the wait's own futures; the pool's one timer fires at
the soonest bucket's end and expires everything in it: never before a deadline, at most
``BUCKET_S`` and a millisecond after it. Leaving a bucket early is O(1); an emptied bucket is
dropped when its time comes.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from typing import Protocol

BUCKET_S = 0.05


class Expiring(Protocol):
    def expired(self) -> None: ...


# A loop's clock may round (uvloop counts whole milliseconds): a timer can fire up to this much
# early, so a bucket ends this much after every deadline in it and is due this much before.
CLOCK_SLACK_S = 0.001


def _key(deadline: float) -> int:
    return math.ceil((deadline + CLOCK_SLACK_S) / BUCKET_S)


class Deadlines:
    """Waiting requests by deadline, and the one timer that expires them."""

    __slots__ = ("_buckets", "_keys", "_timer", "_timer_key")

    def __init__(self) -> None:
        self._buckets: dict[int, set[Expiring]] = {}
        self._keys: list[int] = []  # a heap of the buckets' keys
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key = 0

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def add(self, waiter: Expiring, deadline: float) -> None:
        """``waiter.expired()`` is called once ``deadline`` (monotonic) has passed, unless it is
        removed before."""
        key = _key(deadline)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._keys, key)
            if self._timer is None or key < self._timer_key:
                self._arm()
        bucket.add(waiter)

    def remove(self, waiter: Expiring, deadline: float) -> None:
        bucket = self._buckets.get(_key(deadline))
        if bucket is not None:
            bucket.discard(waiter)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        key = self._timer_key = self._keys[0]
        delay = max(0.0, key * BUCKET_S - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = time.monotonic() + CLOCK_SLACK_S
        keys = self._keys
        while keys and keys[0] * BUCKET_S <= now:
            for waiter in self._buckets.pop(heapq.heappop(keys), ()):
                waiter.expired()
        if keys:
            self._arm()
