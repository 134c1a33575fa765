"""The shared store: lua/limiter.lua on Redis, one EVALSHA per operation (pipelined with
the other operations of the same event-loop turn: one pipeline per master on a Cluster)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from importlib.resources import files

from ratelimit.fair_share import Ask
from ratelimit.limits import NOTHING, Cost, Decision, Limits, Policy
from ratelimit.redis_connection import Client, RedisConnection
from ratelimit.script_calls import ScriptCalls
from ratelimit.store import READY_KEY, Clock, Store, args, decode, wire

SCRIPT = (files("ratelimit") / "lua" / "limiter.lua").read_text()

READY_TTL_MS = 60_000
# Any policy will do for the readiness probe: a peek of nothing on keys of its own.
_PROBE_POLICY = Limits(rpm=1, tpm=0, rpd=0, tpd=0).policy()


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """Which Redis server holds a budget now, and since when it runs."""

    run_id: str
    uptime_s: float


class RedisStore(Store):
    """Budgets shared by every process that names the same Redis and prefix.

    Time is Redis server time unless a ``clock`` is injected (tests); all keys of one
    budget share a hash tag, so one budget lives in one Cluster slot.
    """

    kind = "redis"

    def __init__(
        self,
        redis: Client | RedisConnection,
        prefix: str = "ratelimit",
        clock: Clock | None = None,
        timeout_s: float = 5.0,
        replicas: int = 0,
        replica_wait_ms: int = 100,
    ) -> None:
        self.connection = redis if isinstance(redis, RedisConnection) else RedisConnection(client=redis)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._clock = clock
        self._calls = ScriptCalls(self.connection, SCRIPT, timeout_s, replicas, replica_wait_ms)

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "ratelimit",
        clock: Clock | None = None,
        timeout_s: float = 5.0,
        replicas: int = 0,
        replica_wait_ms: int = 100,
    ) -> RedisStore:
        """A store on any URL form of ``ratelimit.redis_url``; connects on first use. With
        ``replicas``, each operation returns once that many replicas have it (Redis WAIT, at most
        ``replica_wait_ms``), so a failover cannot lose a granted admission."""
        return cls(RedisConnection(url, timeout_s), prefix, clock, timeout_s, replicas, replica_wait_ms)

    @property
    def unreplicated(self) -> int:
        """Operations that returned before ``replicas`` replicas acknowledged them."""
        return self._calls.unreplicated

    @property
    def redis(self) -> Client:
        """The client, once a first call has opened it (see ``client``)."""
        if self.connection.current is None:
            raise RuntimeError("the Redis store has not connected yet (await store.client() first)")
        return self.connection.current

    async def client(self) -> Client:
        """The client, connecting (and detecting a Cluster) if this is the first use."""
        async with asyncio.timeout(self.timeout_s):
            return await self.connection.client()

    def keys(self, key: str) -> list[str]:
        tag = f"{{{self.prefix}:{key}}}"
        return [f"{tag}:log", f"{tag}:state", f"{tag}:refunds"]

    def fair_keys(self, key: str) -> list[str]:
        """The budget's keys with its fair-share record (tags, waits): the same hash slot."""
        tag = f"{{{self.prefix}:{key}}}"
        return [f"{tag}:log", f"{tag}:state", f"{tag}:refunds", f"{tag}:tags", f"{tag}:waits"]

    async def acquire(self, key: str, policy: Policy, cost: Cost, fair: Ask | None = None) -> Decision:
        return await self._run(key, policy, "acquire", cost, fair=fair)

    async def peek(self, key: str, policy: Policy, cost: Cost = NOTHING) -> Decision:
        return await self._run(key, policy, "peek", cost)

    async def charge(self, key: str, policy: Policy, cost: Cost) -> Decision:
        return await self._run(key, policy, "charge", cost)

    async def refund(
        self,
        key: str,
        policy: Policy,
        tokens: int,
        admitted_at_ms: int,
        requests: int = 0,
        fair: Ask | None = None,
    ) -> Decision:
        return await self._run(key, policy, "refund", Cost(requests, tokens), admitted_at_ms, fair)

    async def reset(self, key: str) -> None:
        client = await self.client()
        await client.delete(*self.fair_keys(key))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                client = await self.connection.client()
                return bool(await client.ping())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def ready(self, key: str = READY_KEY) -> bool:
        """Whether an admission for ``key`` could succeed now: a write and a script call on
        keys of the budget's own slot, so on the master that holds it (a replica answers
        READONLY, a Cluster node that lost its slot's master CLUSTERDOWN)."""
        tag = f"{{{self.prefix}:{key}}}"
        probe = [f"{tag}:ready:log", f"{tag}:ready:state", f"{tag}:ready:refunds"]
        line = wire(args(_PROBE_POLICY, "peek", NOTHING, None, time.time_ns() // 1_000_000))
        try:
            async with asyncio.timeout(self.timeout_s):
                client = await self.connection.client()
                await client.set(f"{tag}:ready", b"1", px=READY_TTL_MS)
                await self._calls.call(probe, line)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False
        return True

    async def server(self, key: str) -> ServerIdentity:
        """The run id and uptime of the server holding ``key`` now: a new run id since the last
        look means that server restarted or another one took over (a failover)."""
        async with asyncio.timeout(self.timeout_s):
            info = await self.connection.node_info(self.keys(key)[0], "server")
        return ServerIdentity(str(info.get("run_id", "")), float(info.get("uptime_in_seconds", 0)))

    async def close(self) -> None:
        await self._calls.drain()
        await self.connection.aclose()

    async def _run(
        self, key: str, policy: Policy, op: str, cost: Cost, admitted_at_ms: int = 0, fair: Ask | None = None
    ) -> Decision:
        asked_at = time.monotonic()
        now = self._clock() if self._clock else None
        # Day bounds come from our clock; the script picks the day that holds server time.
        argv = args(
            policy, op, cost, now, now if now is not None else time.time_ns() // 1_000_000, admitted_at_ms
        )
        if fair is None:
            line, keys = wire(argv), self.keys(key)
        else:
            line, keys = wire(argv, fair), self.fair_keys(key)
        async with asyncio.timeout(self.timeout_s):
            raw = await self._calls.call(keys, line)
        return decode(policy, raw, asked_at)
