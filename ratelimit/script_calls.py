"""Calls of one Lua script on Redis, batched into one pipeline when made in the same turn.

A Python client spends far more time per command than Redis does running the limiter, so
callers that arrive in the same event-loop turn while others are waiting share one
pipeline: one write, one read, each script call still atomic and in arrival order. A call
made while none is under way goes out at once, on its own.

On a Redis Cluster the cluster client refuses scripts in a pipeline: there every call goes
out on its own, concurrently with the others, to the master of its keys' slot.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

from ratelimit.redis_connection import Client, RedisConnection


@dataclass(slots=True)
class _Call:
    keys: list[str]
    line: str
    future: asyncio.Future[Any]


class ScriptCalls:
    """EVALSHA of ``script``, reloading it when Redis has lost it (restart, SCRIPT FLUSH,
    a node that has never run it: a new master after a failover)."""

    def __init__(self, connection: RedisConnection, script: str, timeout_s: float) -> None:
        self.connection = connection
        self.script = script
        self.timeout_s = timeout_s
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._forming: list[_Call] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._alone = 0  # calls under way on their own

    async def call(self, keys: list[str], line: str) -> Any:
        """The script's reply for ``keys`` and the one argument ``line``."""
        client = self.connection.current
        if client is None:
            client = await self.connection.client()
        if self.connection.cluster:
            return await self._one(client, keys, line)
        if self._forming is None and not self._alone and not self._sending:
            # Nothing under way: waiting a turn for company would only add latency.
            self._alone += 1
            try:
                return await self._one(client, keys, line)
            finally:
                self._alone -= 1
        loop = asyncio.get_running_loop()
        if self._forming is not None:
            joined = _Call(keys, line, loop.create_future())
            self._forming.append(joined)
            return await joined.future
        own = _Call(keys, line, loop.create_future())
        forming = [own]
        self._forming = forming
        try:
            await asyncio.sleep(0)  # every caller ready in this turn joins the batch
        except asyncio.CancelledError:
            own.future.cancel()
            raise
        finally:
            self._forming = None
            if len(forming) > 1:
                # A task of its own, so that a caller who gives up (cancelled) cannot take
                # the others' calls down with it.
                task = asyncio.ensure_future(self._send(forming))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
        if len(forming) == 1:
            self._alone += 1
            try:
                return await self._one(client, keys, line)
            finally:
                self._alone -= 1
        return await own.future

    async def drain(self) -> None:
        """Wait for batches already sent (before closing the connection)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def _one(self, client: Client, keys: list[str], line: str) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, line)
        except NoScriptError:
            # EVAL runs it and caches it on the node that owns the keys, whichever that is.
            return await client.eval(self.script, len(keys), *keys, line)

    async def _send(self, batch: list[_Call]) -> None:
        live = [c for c in batch if not c.future.done()]
        if not live:
            return
        results: list[Any]
        try:
            async with asyncio.timeout(self.timeout_s):
                results = await self._pipeline(live)
        except BaseException as exc:
            failure = exc if isinstance(exc, Exception) else ConnectionError("limiter batch cancelled")
            results = [failure] * len(live)
            if not isinstance(exc, Exception):
                self._settle(live, results)
                raise
        self._settle(live, results)

    @staticmethod
    def _settle(calls: list[_Call], results: list[Any]) -> None:
        for c, result in zip(calls, results, strict=True):
            if c.future.done():
                continue
            if isinstance(result, BaseException):
                c.future.set_exception(result)
            else:
                c.future.set_result(result)

    def _client(self) -> Client:
        # Batches form only after a first call has opened the client.
        assert self.connection.current is not None
        return self.connection.current

    async def _pipeline(self, calls: list[_Call]) -> list[Any]:
        results = await self._execute(calls)
        lost = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if lost:
            await self._client().script_load(self.script)
            again = await self._execute([calls[i] for i in lost])
            for i, result in zip(lost, again, strict=True):
                results[i] = result
        return results

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        pipe = self._client().pipeline(transaction=False)
        for c in calls:
            pipe.evalsha(self.sha, len(c.keys), *c.keys, c.line)
        return await pipe.execute(raise_on_error=False)
