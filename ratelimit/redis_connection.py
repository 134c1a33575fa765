"""The client behind a Redis URL: one server, the master Sentinel names, or a Redis Cluster.

A plain URL may name any node of a Cluster: the first connection asks the node
(``INFO cluster``) and, when it says ``cluster_enabled:1``, switches to redis-py's cluster
client, which follows MOVED/ASK and failovers by itself. Nothing connects before the first
use, so a service starts (and says it is not ready) while Redis is still down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoPermissionError

from ratelimit import redis_url

log = logging.getLogger("ratelimit.redis")

Client = Redis | RedisCluster


class RedisConnection:
    """One URL's client, opened on first use; ``topology`` says what it found."""

    def __init__(self, url: str = "", timeout_s: float = 5.0, client: Client | None = None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.current: Client | None = client
        self.cluster = isinstance(client, RedisCluster)
        self.topology = "sentinel" if redis_url.is_sentinel(url) else ("cluster" if self.cluster else "redis")
        self._sentinel: Sentinel | None = None
        self._lock = asyncio.Lock()
        if client is None and redis_url.is_sentinel(url):
            # Sentinel clients connect lazily too: building them here costs no I/O.
            self.current = self._sentinel_master()

    def _common(self) -> dict[str, Any]:
        # No socket timeout (redis-py's default is 5 s): with one, every send is wrapped in
        # asyncio.wait_for, a task per command on Python 3.11. One asyncio.timeout per call
        # bounds a hung server just as well for a fraction of the cost.
        return {"socket_timeout": None, "socket_connect_timeout": self.timeout_s}

    async def client(self) -> Client:
        """The client, opening it (and finding out whether the URL names a Cluster) on first use."""
        if self.current is not None:
            return self.current
        async with self._lock:
            if self.current is None:
                self.current = await self._open()
        return self.current

    async def _open(self) -> Client:
        plain = Redis.from_url(self.url, **self._common())
        if self.url.lower().startswith("unix://"):
            return plain
        try:
            info = await plain.info("cluster")
        except NoPermissionError:
            log.warning("this Redis user may not run INFO: taking the URL as one server, not a Cluster")
            return plain
        except BaseException:
            await plain.aclose()
            raise
        if not int(info.get("cluster_enabled", 0)):
            return plain
        await plain.aclose()
        # The URL's node is only where discovery starts: the client learns every node and
        # keeps following the cluster's topology (new masters after a failover included).
        # reinitialize_steps=0: a MOVED only patches that slot. By default every fifth MOVED
        # rebuilds the topology and closes every connection, under calls still in flight on
        # them, which the client then sends again: a script call counted twice.
        client = RedisCluster.from_url(self.url, reinitialize_steps=0, **self._common())
        await client.initialize()
        self.cluster = True
        self.topology = "cluster"
        log.info("the Redis URL names a node of a Redis Cluster: using the cluster client")
        return client

    def _sentinel_master(self) -> Redis:
        target = redis_url.sentinel(self.url)
        tls = {k: v for k, v in target.options.items() if k.startswith("ssl")}
        if target.tls:
            tls["ssl"] = True
        self._sentinel = Sentinel(
            target.sentinels,
            sentinel_kwargs={
                "socket_timeout": self.timeout_s,
                "socket_connect_timeout": self.timeout_s,
                **tls,
                **target.sentinel_options,
            },
        )
        options = {**target.options, **self._common()}
        if target.tls:
            options["ssl"] = True
        # The pool asks the sentinels for the master's address on every new connection and
        # drops connections to a master that became a replica: failovers are followed.
        return self._sentinel.master_for(target.service, db=target.db, **options)

    async def node_info(self, key: str, section: str) -> dict[str, Any]:
        """INFO ``section`` of the server that holds ``key`` (its slot's master on a Cluster)."""
        client = await self.client()
        if isinstance(client, RedisCluster):
            await client.initialize()
            node = client.get_node_from_key(key)
            return await client.info(section, target_nodes=node)
        return await client.info(section)

    async def aclose(self) -> None:
        if self.current is not None:
            await self.current.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()
