"""Calls of one Lua script on Redis, batched into one pipeline when made in the same turn.

A Python client spends far more time per command than Redis does running the limiter, so
callers that arrive in the same event-loop turn while others are waiting share one
pipeline: one write, one read, each script call still atomic and in arrival order. A call
made while none is under way goes out at once, on its own.

On a Redis Cluster the cluster client refuses scripts in a pipeline: there a batch is split
by master, one pipeline per master on one of its connections, and a call a node turns away
(MOVED, ASK, NOSCRIPT, a dead connection) goes again by the cluster client's own path, which
follows redirections and failovers.

With ``replicas`` set, every call is followed by ``WAIT replicas ms`` on the same connection
(WAIT covers the writes of its own connection only): a call returns once that many replicas
have its writes, or after ``replica_wait_ms`` (then it counts in ``unreplicated``). A failover
then cannot lose an admission that was granted. After a wait that ran out (no replica: say a
master just promoted) calls go unconfirmed for ``WAIT_RETRY_S`` before waiting again, so a
missing replica costs one wait per interval, not one per admission.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.exceptions import NoScriptError

from ratelimit.redis_connection import Client, RedisConnection

log = logging.getLogger("ratelimit.redis")

WAIT_RETRY_S = 1.0


@dataclass(slots=True)
class _Call:
    keys: list[str]
    line: str
    future: asyncio.Future[Any]


class ScriptCalls:
    """EVALSHA of ``script``, reloading it when Redis has lost it (restart, SCRIPT FLUSH,
    a node that has never run it: a new master after a failover)."""

    def __init__(
        self,
        connection: RedisConnection,
        script: str,
        timeout_s: float,
        replicas: int = 0,
        replica_wait_ms: int = 100,
    ) -> None:
        self.connection = connection
        self.script = script
        self.timeout_s = timeout_s
        self.replicas = replicas
        self.replica_wait_ms = replica_wait_ms
        self.unreplicated = 0
        """Calls that returned before ``replicas`` replicas acknowledged them."""
        self._wait_again_at = 0.0  # monotonic; no WAIT before it (the last one ran out)
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._forming: list[_Call] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._alone = 0  # calls under way on their own

    async def call(self, keys: list[str], line: str) -> Any:
        """The script's reply for ``keys`` and the one argument ``line``."""
        client = self.connection.current
        if client is None:
            client = await self.connection.client()
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
        if self._waiting():
            # A pipeline of one: the call and its WAIT on one connection.
            alone = _Call(keys, line, asyncio.get_running_loop().create_future())
            result = (await self._pipeline([alone]))[0]
            if isinstance(result, Exception):
                raise result
            return result
        result = await self._plain(client, keys, line)
        if self.replicas:
            self._unconfirmed(1)
        return result

    async def _plain(self, client: Client, keys: list[str], line: str) -> Any:
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
        client = self._client()
        if isinstance(client, RedisCluster):
            return await self._by_node(client, calls)
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
        if not self._waiting():
            results = await pipe.execute(raise_on_error=False)
            if self.replicas:
                self._unconfirmed(len(calls))
            return results
        pipe.execute_command("WAIT", self.replicas, self.replica_wait_ms)
        *results, acked = await pipe.execute(raise_on_error=False)
        self._count(acked, len(calls))
        return results

    def _waiting(self) -> bool:
        return bool(self.replicas) and time.monotonic() >= self._wait_again_at

    def _count(self, acked: Any, calls: int) -> None:
        if isinstance(acked, Exception) or int(acked) < self.replicas:
            self._wait_again_at = time.monotonic() + WAIT_RETRY_S
            self._unconfirmed(calls)

    def _unconfirmed(self, calls: int) -> None:
        if calls <= 0:
            return
        if not self.unreplicated:
            log.warning(
                "limiter writes returned before %d Redis replica(s) acknowledged them (within %d ms): "
                "a failover now could lose them; counted in the store's `unreplicated`",
                self.replicas,
                self.replica_wait_ms,
            )
        self.unreplicated += calls

    async def _by_node(self, client: RedisCluster, calls: list[_Call]) -> list[Any]:
        """One pipeline per master, each call to its slot's master as the client last saw it."""
        await client.initialize()
        results: list[Any] = [None] * len(calls)
        again: list[int] = []  # turned away: by the cluster client's own path
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, c in enumerate(calls):
            node = client.get_node_from_key(c.keys[0])
            if node is None:
                again.append(i)
            else:
                groups.setdefault(node.name, (node, []))[1].append(i)
        waiting = self._waiting()

        async def send(node: ClusterNode, indexes: list[int]) -> None:
            sent = [
                PipelineCommand(j, "EVALSHA", self.sha, len(calls[j].keys), *calls[j].keys, calls[j].line)
                for j in indexes
            ]
            if waiting:
                sent.append(PipelineCommand(-1, "WAIT", self.replicas, self.replica_wait_ms))
            try:
                await node.execute_pipeline(sent)
            except Exception:  # noqa: BLE001 - the node is gone: the cluster client finds the new one
                # A call that ran before the connection broke runs twice: over-counted, never under.
                again.extend(indexes)
                return
            acked = sent.pop().result if waiting else None
            answered = 0
            for command, j in zip(sent, indexes, strict=True):
                if isinstance(command.result, Exception):
                    again.append(j)
                else:
                    results[j] = command.result
                    answered += 1
            if waiting:
                self._count(acked, answered)
            elif self.replicas:
                self._unconfirmed(answered)

        await asyncio.gather(*(send(node, indexes) for node, indexes in groups.values()))
        if again:
            replies = await asyncio.gather(
                *(self._plain(client, calls[j].keys, calls[j].line) for j in again), return_exceptions=True
            )
            for j, reply in zip(again, replies, strict=True):
                results[j] = reply
            if self.replicas:
                self._unconfirmed(sum(1 for r in replies if not isinstance(r, BaseException)))
        return results
