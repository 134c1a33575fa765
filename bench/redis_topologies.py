"""What an admission costs on each Redis topology, with and without WAIT for a replica.

Starts private topologies on free loopback ports with ``redis-server`` (the test suite's
tests/topologies.py): one server with a replica (the Sentinel set's master, reached straight
and through Sentinel) and a 3-master 3-replica Cluster. For each, from one asyncio process:
admissions/s with 1 and 50 concurrent callers, spread over 16 budgets (so on the Cluster they
land on all three masters), four limits too high to bind (every call writes), medians of
several rounds measured side by side in one run. With WAIT each admission returns once the
replica has it.

    python bench/redis_topologies.py [--rounds 3] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

# The topologies are the test suite's own; bench scripts run from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ratelimit import Cost, Limits, RedisStore
from tests.topologies import Cluster, Sentinels

COST = Cost(1, 1_500)
WIDE = Limits(rpm=10**9, tpm=10**13, rpd=10**10, tpd=10**15).policy()
BUDGETS = [f"budget-{i}" for i in range(16)]


async def rate(store: RedisStore, tasks: int, seconds: float) -> float:
    """Admissions per second with ``tasks`` concurrent callers for ``seconds``."""
    done = 0
    stop = time.monotonic() + seconds

    async def caller(i: int) -> None:
        nonlocal done
        key = BUDGETS[i % len(BUDGETS)]
        while time.monotonic() < stop:
            await store.acquire(key, WIDE, COST)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller(i) for i in range(tasks)))
    return done / (time.monotonic() - started)


async def measure(urls: dict[str, str], rounds: int, seconds: float) -> dict[tuple[str, int], list[float]]:
    stores = {}
    for name, url in urls.items():
        for replicas in (0, 1):
            label = f"{name}, WAIT 1" if replicas else name
            store = RedisStore.from_url(url, prefix=f"bench-{uuid.uuid4().hex[:8]}", replicas=replicas)
            await store.acquire(BUDGETS[0], WIDE, COST)  # connect (and detect a Cluster) first
            stores[label] = store
    figures: dict[tuple[str, int], list[float]] = {}
    for _ in range(rounds):
        for label, store in stores.items():
            for tasks in (1, 50):
                figures.setdefault((label, tasks), []).append(await rate(store, tasks, seconds))
    for store in stores.values():
        await store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5)
    opts = parser.parse_args()
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis_topologies: needs redis-server on PATH")
    cluster, sentinels = Cluster(binary), Sentinels(binary)
    try:
        cluster.start()
        sentinels.start()
        master = sentinels.current_master()
        urls = {
            "one server (with a replica)": master.url,
            "Sentinel": sentinels.url(),
            "Cluster (3 masters)": cluster.url(0),
        }
        figures = asyncio.run(measure(urls, opts.rounds, opts.seconds))
    finally:
        cluster.close()
        sentinels.close()
    print(f"admissions/s, median of {opts.rounds} rounds of {opts.seconds}s, 16 budgets, one process\n")
    print("| topology | 1 caller | 50 callers |")
    print("|---|---|---|")
    for label in dict.fromkeys(label for label, _ in figures):
        one, fifty = (statistics.median(figures[(label, t)]) for t in (1, 50))
        print(f"| {label} | {one:,.0f} | {fifty:,.0f} |")


if __name__ == "__main__":
    main()
