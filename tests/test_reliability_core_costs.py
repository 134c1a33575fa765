"""Costs at the edge of what the stores can count: both stores must agree.

The wire schema now bounds ``max_tokens`` to a 32-bit integer, so requests cannot produce such
costs; this documents a core limit for its owner (reported, not fixed here): the Redis store
(Lua numbers are doubles, integers 64-bit) wraps costs the embedded store counts exactly.
"""

from __future__ import annotations

import pytest

from ratelimit import Cost, EmbeddedStore, Limits, RedisStore
from ratelimit.limiter import Limiter

LIMITS = Limits(rpm=10, tpm=0, rpd=0, tpd=0)


async def usage_after(store: EmbeddedStore | RedisStore, key: str, tokens: int) -> int:
    limiter = Limiter(LIMITS, store)
    await limiter.reset(key)
    try:
        decision = await limiter.acquire(key, Cost(1, tokens))
        return decision.state("tokens/minute").used
    finally:
        await limiter.reset(key)


async def test_the_largest_cost_a_valid_request_can_have_is_counted_alike(
    redis_url: str, redis_prefix: str
) -> None:
    # 128 choices of 2**31 - 1 tokens plus a 1 MiB prompt: what the wire schema still admits.
    tokens = 128 * (2**31 - 1) + 1_048_576
    redis = RedisStore.from_url(redis_url, prefix=redis_prefix)
    try:
        assert await usage_after(redis, "edge", tokens) == tokens
    finally:
        await redis.close()
    assert await usage_after(EmbeddedStore(), "edge", tokens) == tokens


@pytest.mark.xfail(reason="core: the Redis store wraps costs past 2**63 (reported to the lead)", strict=True)
async def test_costs_past_64_bits_are_counted_alike(redis_url: str, redis_prefix: str) -> None:
    tokens = 2**64
    redis = RedisStore.from_url(redis_url, prefix=redis_prefix)
    try:
        in_redis = await usage_after(redis, "huge", tokens)
    finally:
        await redis.close()
    assert in_redis == await usage_after(EmbeddedStore(), "huge", tokens)
