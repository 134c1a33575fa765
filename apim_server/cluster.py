"""Instances sharing one Redis publish their queue figures there, so any ``/status`` shows the sum."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ratelimit.redis_store import RedisStore

log = logging.getLogger("apim.cluster")

TTL_MS = 5000
"""An instance that stopped publishing drops out of the sum after this long."""
PERIOD_S = 1.0
SUMMED = (
    "depth",
    "in_flight",
    "admitted",
    "requests",
    "received",
    "received_per_min",
    "admitted_per_min",
    "answered_per_min",
)


class Cluster:
    """This instance's figures under ``{prefix:cluster}:instance:<id>`` (expiring), indexed by a
    sorted set of last-publish times; all keys share one hash tag, so on a Redis Cluster the
    whole view lives in one slot and one pipeline or MGET reads it."""

    def __init__(
        self,
        store: RedisStore | None,
        prefix: str,
        instance_id: str,
        figures: Callable[[], dict[str, Any]],
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.store = store
        self.on_failure = on_failure
        self.instance_id = instance_id
        self.figures = figures
        tag = f"{{{prefix}:cluster}}"
        self._index = f"{tag}:instances"
        self._prefix = f"{tag}:instance:"
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.store is not None:
            self._task = asyncio.get_running_loop().create_task(self._publish_forever(), name="apim-cluster")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.store is not None:
            try:
                client = await self.store.client()
                await (
                    client.pipeline(transaction=False)
                    .delete(self._prefix + self.instance_id)
                    .zrem(self._index, self.instance_id)
                    .execute()
                )
            except Exception:  # noqa: BLE001 - best effort on the way out
                log.debug("could not withdraw this instance from the cluster view")

    async def publish(self) -> None:
        assert self.store is not None
        now_ms = int(time.time() * 1000)
        payload = json.dumps(self.figures(), separators=(",", ":"))
        pipe = (await self.store.client()).pipeline(transaction=False)
        pipe.set(self._prefix + self.instance_id, payload, px=TTL_MS)
        pipe.zadd(self._index, {self.instance_id: now_ms})
        pipe.zremrangebyscore(self._index, "-inf", now_ms - TTL_MS)
        pipe.pexpire(self._index, TTL_MS * 12)
        await pipe.execute()

    async def view(self) -> dict[str, Any]:
        """``{"instances": N, "depth": sum, "in_flight": sum, ...}`` over live instances."""
        own = self.figures()
        if self.store is None:
            return {"instances": 1, **{k: own.get(k, 0) for k in SUMMED}}
        client = await self.store.client()
        now_ms = int(time.time() * 1000)
        ids = [
            i.decode() if isinstance(i, bytes) else str(i)
            for i in await client.zrangebyscore(self._index, now_ms - TTL_MS, "+inf")
        ]
        others = [i for i in ids if i != self.instance_id]
        rows = [own]
        if others:
            for raw in await client.mget([self._prefix + i for i in others]):
                if raw is not None:
                    rows.append(json.loads(raw))
        return {"instances": len(rows), **{k: sum(r.get(k, 0) for r in rows) for k in SUMMED}}

    async def _publish_forever(self) -> None:
        failing = False
        while True:
            try:
                await self.publish()
                failing = False
            except Exception as exc:  # noqa: BLE001 - any failure: say so once, tell the store's health
                if not failing:
                    log.warning("could not publish this instance's figures to Redis: %s", exc)
                failing = True
                if self.on_failure is not None:
                    self.on_failure(exc)
            await asyncio.sleep(PERIOD_S)
