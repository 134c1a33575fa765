"""Cost per admission against the number of configured budgets (SPEC §8): 1, 10, 100, 1,000.

A gateway's admission path without the network to an upstream: route the request's model to
its pool, estimate its cost, queue it, let the pool's dispatcher admit it through the limiter,
and release the grant. N budgets are N models on one deployment, each with its own pool and
dispatcher; admissions go to models drawn at random, with ``--tasks`` callers at a time, and
limits far above the load so every admission is granted. Rounds alternate the budget counts so
machine noise hits all alike; prints medians of admissions/s and microseconds per admission
for the embedded store and the Redis store (REDIS_URL, default 127.0.0.1:6379, under a key
prefix of its own, deleted at the end). Bounded: well under a minute with the defaults.

    python bench/budget_count.py [--admissions 4000] [--rounds 3] [--tasks 50]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import time
import uuid

from apim_server.config import Settings
from apim_server.config_file import ConfigFile, plan
from apim_server.gateway import Gateway
from apim_server.queue import Priority, Ticket
from ratelimit.embedded import EmbeddedStore
from ratelimit.redis_store import RedisStore
from ratelimit.store import Store

COUNTS = (1, 10, 100, 1000)
BODY = {"messages": [{"role": "user", "content": "How many budgets can one gateway hold?"}], "max_tokens": 64}


def gateway(n: int, store: Store) -> Gateway:
    # Each budget its own limits, as models have: every policy (and its parsed form) distinct.
    models = {f"model-{i}": {"rpm": 10_000_000 + i, "tpm": 10_000_000_000 + i} for i in range(n)}
    config = ConfigFile.model_validate(
        {"deployments": [{"name": "bench", "url": "http://127.0.0.1:9/v1", "models": models}]}
    )
    settings = Settings(log_requests=False, max_concurrency=10_000, max_queue=100_000)
    return Gateway(settings, store=store, plan=plan(config, settings, "bench"))


async def admit(gw: Gateway, model: str) -> None:
    pool = gw.router.route(model)
    assert pool is not None
    ticket = Ticket(Priority.NORMAL, pool.estimate({"model": model, **BODY}))
    dispatcher = pool.dispatcher
    grant = await dispatcher.admit_now(ticket)
    if grant is None:
        dispatcher.submit(ticket)
        assert ticket.future is not None
        grant = await ticket.future
    grant.release()


async def one_round(n: int, store: Store, admissions: int, tasks: int) -> float:
    """Admissions per second with ``n`` budgets."""
    gw = gateway(n, store)
    for dispatcher in gw.router.dispatchers():
        dispatcher.start()
    models = [f"model-{i}" for i in range(n)]
    rng = random.Random(n)
    left = admissions

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await admit(gw, rng.choice(models))

    try:
        # Warm every budget first: a budget's first admission builds its record and its policy's
        # day bounds once, which is start-up cost, not cost per admission.
        for model in models:
            await admit(gw, model)
        # As the gateway's start-up does: what lives until exit stays out of full collections.
        gc.collect()
        gc.freeze()
        left = admissions
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(tasks)))
        return admissions / (time.perf_counter() - started)
    finally:
        gc.unfreeze()
        for dispatcher in gw.router.dispatchers():
            await dispatcher.stop()
        for deployment in gw.deployments.values():
            await deployment.upstream.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admissions", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=50)
    args = parser.parse_args()
    prefix = f"bench-budgets-{uuid.uuid4().hex[:8]}"
    redis_store = RedisStore.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), prefix=prefix)
    stores: dict[str, Store] = {"embedded": EmbeddedStore(), "redis": redis_store}
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for kind, store in stores.items():
                for n in COUNTS:
                    rate = await one_round(n, store, args.admissions, args.tasks)
                    results.setdefault((kind, n), []).append(rate)
    finally:
        keys = [k async for k in redis_store.redis.scan_iter(match=f"{{{prefix}:*")]
        for i in range(0, len(keys), 500):
            await redis_store.redis.delete(*keys[i : i + 500])
        await redis_store.close()
    print(f"{args.admissions} admissions per round, {args.tasks} callers, medians of {args.rounds} rounds\n")
    print("| store | budgets | admissions/s | us per admission | vs 1 budget |")
    print("|---|---:|---:|---:|---:|")
    for kind in stores:
        base = statistics.median(results[(kind, 1)])
        for n in COUNTS:
            rate = statistics.median(results[(kind, n)])
            print(f"| {kind} | {n:,} | {rate:,.0f} | {1e6 / rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
