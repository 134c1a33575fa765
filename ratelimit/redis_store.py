"""The shared store: lua/limiter.lua on Redis, one EVALSHA round trip per operation."""

from __future__ import annotations

import time
from importlib.resources import files

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from ratelimit.limits import NOTHING, Cost, Decision, Policy
from ratelimit.store import Clock, Store, args, decode

SCRIPT = (files("ratelimit") / "lua" / "limiter.lua").read_text()


class RedisStore(Store):
    """Budgets shared by every process that names the same Redis and prefix.

    Time is Redis server time unless a ``clock`` is injected (tests); all keys of one
    budget share a hash tag, so the store works on Redis Cluster.
    """

    kind = "redis"

    def __init__(self, redis: Redis, prefix: str = "ratelimit", clock: Clock | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self._clock = clock
        self._sha: str | None = None

    @classmethod
    def from_url(cls, url: str, prefix: str = "ratelimit", clock: Clock | None = None) -> RedisStore:
        return cls(Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5), prefix, clock)

    def keys(self, key: str) -> list[str]:
        tag = f"{{{self.prefix}:{key}}}"
        return [f"{tag}:log", f"{tag}:meta", f"{tag}:refunds"]

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
            return bool(await self.redis.ping())
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return False

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, key: str, policy: Policy, op: str, cost: Cost, admitted_at_ms: int = 0) -> Decision:
        now = self._clock() if self._clock else None
        # Day bounds come from our clock; the script picks the day that holds server time.
        argv = args(
            policy, op, cost, now, now if now is not None else time.time_ns() // 1_000_000, admitted_at_ms
        )
        keys = self.keys(key)
        if self._sha is None:
            self._sha = await self.redis.script_load(SCRIPT)
        try:
            raw = await self.redis.evalsha(self._sha, len(keys), *keys, *argv)
        except NoScriptError:
            # Redis restarted or flushed its script cache: load again, once.
            self._sha = await self.redis.script_load(SCRIPT)
            raw = await self.redis.evalsha(self._sha, len(keys), *keys, *argv)
        return decode(policy, raw)
