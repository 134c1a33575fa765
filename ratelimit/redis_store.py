"""The shared store: lua/limiter.lua on Redis, one EVALSHA per operation (pipelined with
the other operations of the same event-loop turn)."""

from __future__ import annotations

import asyncio
import time
from importlib.resources import files

from redis.asyncio import Redis

from ratelimit.limits import NOTHING, Cost, Decision, Policy
from ratelimit.script_calls import ScriptCalls
from ratelimit.store import Clock, Store, args, decode, wire

SCRIPT = (files("ratelimit") / "lua" / "limiter.lua").read_text()


class RedisStore(Store):
    """Budgets shared by every process that names the same Redis and prefix.

    Time is Redis server time unless a ``clock`` is injected (tests); all keys of one
    budget share a hash tag, so the store works on Redis Cluster.
    """

    kind = "redis"

    def __init__(
        self, redis: Redis, prefix: str = "ratelimit", clock: Clock | None = None, timeout_s: float = 5.0
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.timeout_s = timeout_s
        self._clock = clock
        self._calls = ScriptCalls(redis, SCRIPT, timeout_s)

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "ratelimit", clock: Clock | None = None, timeout_s: float = 5.0
    ) -> RedisStore:
        # No socket timeout (redis-py's default is 5 s): with one, every send is wrapped in
        # asyncio.wait_for, a task per command on Python 3.11. One asyncio.timeout per call
        # bounds a hung server just as well for a fraction of the cost.
        redis = Redis.from_url(url, socket_timeout=None, socket_connect_timeout=timeout_s)
        return cls(redis, prefix, clock, timeout_s)

    def keys(self, key: str) -> list[str]:
        tag = f"{{{self.prefix}:{key}}}"
        return [f"{tag}:log", f"{tag}:state", f"{tag}:refunds"]

    async def acquire(self, key: str, policy: Policy, cost: Cost) -> Decision:
        return await self._run(key, policy, "acquire", cost)

    async def peek(self, key: str, policy: Policy, cost: Cost = NOTHING) -> Decision:
        return await self._run(key, policy, "peek", cost)

    async def charge(self, key: str, policy: Policy, cost: Cost) -> Decision:
        return await self._run(key, policy, "charge", cost)

    async def refund(self, key: str, policy: Policy, tokens: int, admitted_at_ms: int) -> Decision:
        return await self._run(key, policy, "refund", Cost(0, tokens), admitted_at_ms)

    async def reset(self, key: str) -> None:
        await self.redis.delete(*self.keys(key))

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                return bool(await self.redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        await self._calls.drain()
        await self.redis.aclose()

    async def _run(self, key: str, policy: Policy, op: str, cost: Cost, admitted_at_ms: int = 0) -> Decision:
        asked_at = time.monotonic()
        now = self._clock() if self._clock else None
        # Day bounds come from our clock; the script picks the day that holds server time.
        argv = args(
            policy, op, cost, now, now if now is not None else time.time_ns() // 1_000_000, admitted_at_ms
        )
        line = wire(argv)
        async with asyncio.timeout(self.timeout_s):
            raw = await self._calls.call(self.keys(key), line)
        return decode(policy, raw, asked_at)
