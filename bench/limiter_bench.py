"""What one admission through the rate-limit core costs, next to its ceiling and to `limits`.

Prints markdown tables of medians over several rounds, measured side by side in one run:
- admissions/s from one asyncio process with 1 and 50 concurrent callers on one budget,
  weighted (1,500 tokens), four limits set too high to bind: the Redis store (Redis server
  time), the embedded store, a bare EVALSHA of a trivial script (the ceiling of one Python
  process making one call per command) and the `limits` library's moving window
  (`MovingWindowRateLimiter` on `limits.aio.storage.RedisStorage`, weighted: cost=1500);
- time per admission with 10 and with 100,000 entries in the window, in steady state (an
  injected clock moves so that each admission pushes one old entry out): one call at a
  time, and for Redis also pipelined (close to Redis's own time per call);
- the same admission with a fair-share ask (``ratelimit.fair_share``): as a gateway without
  tenants sends it (classes only, nothing else waiting), and with tenants (two more tenants
  waiting at this instance, two other instances with three each, none ahead, so every ask is
  admitted): admissions/s, and Redis's own time per admission (``INFO commandstats``).

With ``--before REV`` the throughput table also has the Redis store as it was at git
revision REV (extracted with ``git archive`` into a temporary package), measured in the
same rounds: before/after figures side by side.

Traffic goes only to the Redis of REDIS_URL (default 127.0.0.1:6379), under key prefixes
of its own, deleted at the end. Bounded: about a minute with the defaults.
    python bench/limiter_bench.py [--rounds 3] [--seconds 1.5] [--cost-rounds 7] [--before REV]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.asyncio import Redis
from redis.exceptions import NoScriptError
from redis.utils import HIREDIS_AVAILABLE

from ratelimit import Cost, EmbeddedStore, Limits, RedisStore, Store
from ratelimit.fair_share import Ask
from ratelimit.redis_store import SCRIPT
from ratelimit.store import args, wire

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TOKENS = 1_500
COST = Cost(1, TOKENS)
# Too high to bind: every call is a full admission that writes.
WIDE = Limits(rpm=10**9, tpm=10**13, rpd=10**10, tpd=10**15).policy()
SIZES = (10, 100_000)
T0 = 1_700_000_000_000
CALLERS = (1, 50)
ALONE = Ask("(none)", 1, 0, "me")
"""A gateway without tenants on Redis: its class, nothing else waiting."""
TENANTS = Ask("a", 1, 1_000, "me", 1, ((1, "b"), (1, "c")))
"""Tenant a asks; b and c wait at the same instance (behind it: primed with large tags)."""
ELSEWHERE = {"r1": ("d", "e", "f"), "r2": ("g", "h", "i")}
"""Two other instances' waiting tenants (behind too)."""
BEHIND = 10**15

Op = Callable[[], Awaitable[object]]
Table = dict[str, dict[int, float]]
ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str, into: Path) -> ModuleType:
    """The ``ratelimit`` package of git revision ``rev``, importable as ``ratelimit_before``."""
    tar = subprocess.run(["git", "archive", rev, "ratelimit"], cwd=ROOT, capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(into, filter="data")
    package = into / "ratelimit_before"
    (into / "ratelimit").rename(package)
    for source in package.rglob("*.py"):
        text = source.read_text()
        text = text.replace("from ratelimit.", "from ratelimit_before.")
        text = text.replace('files("ratelimit")', 'files("ratelimit_before")')
        source.write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module("ratelimit_before")


CPU = 0  # the column of client CPU per operation, next to the caller counts


async def rate(op: Op, callers: int, seconds: float) -> tuple[float, float]:
    """Operations per second with ``callers`` tasks calling ``op`` back to back, and this
    process's CPU time per operation in microseconds (steadier than wall time on a busy
    machine: it is what one client process spends, whoever else runs)."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await op()
            done += 1

    await op()  # connections made and script loaded before the clock starts
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - started), (time.process_time() - cpu) / done * 1e6


async def throughput_round(prefix: str, seconds: float, before: tuple[str, ModuleType] | None) -> Table:
    redis = Redis.from_url(REDIS_URL, socket_timeout=None)
    trivial = await redis.script_load("return 1")
    redis_store = RedisStore.from_url(REDIS_URL, prefix=prefix)
    embedded = EmbeddedStore()
    storage = RedisStorage(
        REDIS_URL.replace("redis://", "async+redis://"),
        implementation="redispy",
        key_prefix=f"{prefix}-limits",
    )
    moving = MovingWindowRateLimiter(storage)
    item = RateLimitItemPerMinute(10**9)
    ops: dict[str, Op] = {
        "bare EVALSHA `return 1` (ceiling)": lambda: redis.evalsha(trivial, 0),
        "Redis store": lambda: redis_store.acquire("t", WIDE, COST),
        "embedded store": lambda: embedded.acquire("t", WIDE, COST),
        "`limits` moving window, cost=1500": lambda: moving.hit(item, "t", cost=TOKENS),
    }
    fair_ops: dict[str, tuple[str, Ask]] = {
        "Redis store, fair-share ask without tenants": ("f0", ALONE),
        "Redis store, fair-share ask, 3 tenants waiting": ("f1", TENANTS),
    }
    for name, (key, ask) in fair_ops.items():
        ops[name] = lambda key=key, ask=ask: redis_store.acquire(key, WIDE, COST, ask)  # type: ignore[misc]
    old_store: Any = None
    if before is not None:
        rev, old = before
        old_store = old.RedisStore.from_url(REDIS_URL, prefix=f"{prefix}-before")
        old_policy = old.Limits(rpm=10**9, tpm=10**13, rpd=10**10, tpd=10**15).policy()
        old_cost = old.Cost(1, TOKENS)
        ops[f"Redis store before ({rev})"] = lambda: old_store.acquire("t", old_policy, old_cost)
    out: Table = {}
    try:
        for name, op in ops.items():
            for callers in CALLERS:
                if name in fair_ops:
                    await prime(redis_store, fair_ops[name][0], None)
                per_s, cpu_us = await rate(op, callers, seconds)
                out.setdefault(name, {})[callers] = per_s
                if callers == 50:
                    out[name][CPU] = cpu_us
                # Every measurement starts from an empty budget.
                await redis_store.reset("t")
                for key, _ in fair_ops.values():
                    await redis_store.reset(key)
                await embedded.reset("t")
                await moving.clear(item, "t")
                if old_store is not None:
                    await old_store.reset("t")
    finally:
        if old_store is not None:
            await old_store.close()
        await redis_store.close()
        await redis.aclose()
    return out


async def prime(store: RedisStore, key: str, now: int | None) -> None:
    """Every other tenant far behind (a huge finish tag), and, when ``now`` is given (an
    injected clock: entries would lapse in a real second), the other instances' waiting
    tenants registered at ``now``."""
    for tenant in ("b", "c", *ELSEWHERE["r1"], *ELSEWHERE["r2"]):
        done = await store.acquire(key, WIDE, Cost(1, 0), Ask(tenant, 1, BEHIND, "prime"))
        assert done.allowed
    if now is None:
        return
    for instance, waiting in ELSEWHERE.items():
        # Registered by an admission of a tenant that then has nothing left waiting.
        ask = Ask(f"{instance}-done", 1, 1, instance, -1, tuple((1, t) for t in waiting))
        if not (await store.acquire(key, WIDE, Cost(1, 0), ask)).allowed:
            raise AssertionError("a primed tenant was held back")


class StepClock:
    """An injected clock that moves ``step`` ms per call: a window of steady size."""

    def __init__(self, step: float) -> None:
        self.step, self.calls = step, 0

    def __call__(self) -> int:
        self.calls += 1
        return T0 + int(self.calls * self.step)


async def pipelined(store: RedisStore, clock: StepClock, calls: int) -> tuple[list[Any], float]:
    """``calls`` admissions in one pipeline: their replies and the seconds it took. The
    shared Redis may lose its script cache meanwhile (a test flushing it): then once more."""
    keys = store.keys("k")
    client = await store.client()
    for _attempt in range(2):
        sha = await client.script_load(SCRIPT)
        pipe = client.pipeline(transaction=False)
        for _ in range(calls):
            now = clock()
            pipe.evalsha(sha, len(keys), *keys, wire(args(WIDE, "acquire", COST, now, now)))
        gc.collect()
        started = time.perf_counter()
        results = await pipe.execute(raise_on_error=False)
        elapsed = time.perf_counter() - started
        if not any(isinstance(r, NoScriptError) for r in results):
            break
    for result in results:
        if isinstance(result, Exception) or result[0] != 1:
            raise AssertionError(f"admission failed during the benchmark: {result}")
    return results, elapsed


async def fill(store: Store, clock: StepClock, entries: int) -> None:
    """Admit ``entries`` costs through the store's own script (pipelined for Redis)."""
    if isinstance(store, RedisStore):
        for start in range(0, entries, 2_000):
            await pipelined(store, clock, min(2_000, entries - start))
    else:
        for _ in range(entries):
            await store.acquire("k", WIDE, COST)


async def one_by_one_us(store: Store, calls: int) -> float:
    gc.collect()
    started = time.perf_counter()
    for _ in range(calls):
        if not (await store.acquire("k", WIDE, COST)).allowed:
            raise AssertionError("a limit bound during the benchmark")
    return (time.perf_counter() - started) / calls * 1e6


async def pipelined_us(store: RedisStore, clock: StepClock, calls: int) -> float:
    _, elapsed = await pipelined(store, clock, calls)
    return elapsed / calls * 1e6


async def window_costs(prefix: str, rounds: int) -> tuple[dict[str, dict[int, list[float]]], dict[int, int]]:
    """Time per admission at each window size, per store and mode: one sample per round,
    the sizes alternating within each round so that both see the same machine."""
    setups: dict[int, tuple[StepClock, RedisStore, EmbeddedStore]] = {}  # Redis's clock first
    samples: dict[str, dict[int, list[float]]] = {}
    held: dict[int, int] = {}
    try:
        for entries in SIZES:
            # A clock per store: each one's window stays at ``entries`` whatever the other does.
            clock, own_clock = StepClock(60_000 / entries), StepClock(60_000 / entries)
            redis_store = RedisStore.from_url(REDIS_URL, prefix=f"{prefix}-w{entries}", clock=clock)
            embedded = EmbeddedStore(clock=own_clock)
            setups[entries] = (clock, redis_store, embedded)
            for store, store_clock in ((redis_store, clock), (embedded, own_clock)):
                await fill(store, store_clock, entries)
                count = (await store.peek("k", WIDE)).state("requests/minute").used
                if count < entries - 2:  # the oldest one or two have just left
                    raise AssertionError(f"window holds {count}, not {entries}")
                held[entries] = count
        for _ in range(rounds):
            for entries, (clock, redis_store, embedded) in setups.items():
                runs = {
                    "Redis store, one call at a time": one_by_one_us(redis_store, 2_000),
                    "Redis store, pipelined (~ Redis time)": pipelined_us(redis_store, clock, 3_000),
                    "embedded store": one_by_one_us(embedded, 20_000),
                }
                for name, run in runs.items():  # awaited one after the other, never together
                    samples.setdefault(name, {}).setdefault(entries, []).append(await run)
    finally:
        for _, redis_store, _ in setups.values():
            await redis_store.reset("k")
            await redis_store.close()
    return samples, held


async def redis_time_us(prefix: str, before: tuple[str, ModuleType], rounds: int) -> dict[str, list[float]]:
    """Redis's own time per admission (``INFO commandstats``) of the current script and of
    the script at ``before``, alternating, 3,000 pipelined admissions per sample. Other
    clients' EVALSHA calls in the same moments would count too: keep the server quiet."""
    rev, old = before
    old_script = (Path(old.__file__).parent / "lua" / "limiter.lua").read_text()
    old_policy = old.Limits(rpm=10**9, tpm=10**13, rpd=10**10, tpd=10**15).policy()

    def now_line(now: int) -> list[Any]:
        return [wire(args(WIDE, "acquire", COST, now, now))]

    def before_line(now: int) -> list[Any]:
        argv = old.store.args(old_policy, "acquire", old.Cost(1, TOKENS), now, now)
        return [old.store.wire(argv)] if hasattr(old.store, "wire") else argv

    variants = {"now": (SCRIPT, now_line), f"before ({rev})": (old_script, before_line)}
    redis = Redis.from_url(REDIS_URL)
    out: dict[str, list[float]] = {}

    async def evalsha_stats() -> tuple[int, int]:
        found = (await redis.info("commandstats")).get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        return int(found["calls"]), int(found["usec"])

    try:
        for _ in range(rounds):
            for name, (script, line) in variants.items():
                keys = [f"{{{prefix}-rt}}:{part}" for part in ("log", "state", "refunds")]
                sha = await redis.script_load(script)
                pipe = redis.pipeline(transaction=False)
                for i in range(3_000):
                    pipe.evalsha(sha, len(keys), *keys, *line(T0 + i * 20))
                calls, usec = await evalsha_stats()
                results = await pipe.execute()
                calls_after, usec_after = await evalsha_stats()
                await redis.delete(*keys)
                if not all(r[0] == 1 for r in results):
                    raise AssertionError("a limit bound during the benchmark")
                out.setdefault(name, []).append((usec_after - usec) / (calls_after - calls))
    finally:
        await redis.aclose()
    return out


async def fair_time_us(prefix: str, rounds: int) -> dict[str, list[float]]:
    """Redis's own time per admission (``INFO commandstats``) without an ask, with the ask of
    a gateway without tenants, and with tenants waiting here and at two other instances;
    alternating, 3,000 pipelined admissions per sample on an injected clock (0.05 ms apart, so
    the other instances' entries stay live). Other clients' EVALSHA calls in the same moments
    count too: keep the server quiet."""
    variants: dict[str, Ask | None] = {
        "no ask": None,
        "ask without tenants": ALONE,
        "ask, 3 tenants here and 3 at each of 2 other instances": TENANTS,
    }
    redis = Redis.from_url(REDIS_URL)
    out: dict[str, list[float]] = {}

    async def evalsha_stats() -> tuple[int, int]:
        found = (await redis.info("commandstats")).get("cmdstat_evalsha", {"calls": 0, "usec": 0})
        return int(found["calls"]), int(found["usec"])

    try:
        for r in range(rounds):
            for name, ask in variants.items():
                clock = StepClock(0.05)
                store = RedisStore.from_url(REDIS_URL, prefix=f"{prefix}-ft{r}", clock=clock)
                client = await store.client()
                if ask is not None and ask.share:
                    await prime(store, "k", T0)
                keys = store.keys("k") if ask is None else store.fair_keys("k")
                sha = await client.script_load(SCRIPT)
                pipe = client.pipeline(transaction=False)
                for _ in range(3_000):
                    now = clock()
                    pipe.evalsha(sha, len(keys), *keys, wire(args(WIDE, "acquire", COST, now, now), ask))
                calls, usec = await evalsha_stats()
                results = await pipe.execute()
                calls_after, usec_after = await evalsha_stats()
                await store.reset("k")
                await store.close()
                if not all(res[0] == 1 for res in results):
                    raise AssertionError("an ask was not admitted during the benchmark")
                out.setdefault(name, []).append((usec_after - usec) / (calls_after - calls))
    finally:
        await redis.aclose()
    return out


def median_table(rounds: list[Table]) -> Table:
    return {
        name: {col: statistics.median(r[name][col] for r in rounds) for col in rounds[0][name]}
        for name in rounds[0]
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each throughput run")
    parser.add_argument(
        "--cost-rounds", type=int, default=7, help="rounds of the 10 vs 100,000 entries comparison"
    )
    parser.add_argument("--before", metavar="REV", help="also measure the Redis store of this git revision")
    opts = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    began = time.perf_counter()
    before = None
    workdir = Path(tempfile.mkdtemp(prefix="limiter-bench-"))
    try:
        if opts.before:
            before = (opts.before, load_revision(opts.before, workdir))
        await measure_and_print(opts, prefix, began, before)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def measure_and_print(
    opts: argparse.Namespace, prefix: str, began: float, before: tuple[str, ModuleType] | None
) -> None:
    speed = []
    for i in range(opts.rounds):
        speed.append(await throughput_round(f"{prefix}-{i}", opts.seconds, before))
        elapsed = time.perf_counter() - began
        print(f"throughput round {i + 1}/{opts.rounds} done at {elapsed:.0f} s", flush=True)
    cost, held = await window_costs(prefix, opts.cost_rounds)
    server = await redis_time_us(prefix, before, opts.cost_rounds) if before is not None else None
    fair_server = await fair_time_us(prefix, opts.cost_rounds)
    print(f"window costs done at {time.perf_counter() - began:.0f} s", flush=True)

    redis = Redis.from_url(REDIS_URL)
    version = (await redis.info("server"))["redis_version"]
    await redis.aclose()
    print(
        f"\nRedis {version}, redis-py with hiredis {'on' if HIREDIS_AVAILABLE else 'off'}, "
        f"{os.cpu_count()} CPUs; medians of {opts.rounds} throughput rounds ({opts.seconds:g} s per run) "
        f"and {opts.cost_rounds} rounds of window costs\n"
    )
    table = median_table(speed)
    print(
        "| one process, one budget, 1,500 tokens | admissions/s, 1 caller | admissions/s, 50 callers "
        "| client CPU us per admission, 50 callers |"
    )
    print("|---|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row[1]:,.0f} | {row[50]:,.0f} | {row[CPU]:.0f} |")
    ceiling, store, ref = (
        "bare EVALSHA `return 1` (ceiling)",
        "Redis store",
        "`limits` moving window, cost=1500",
    )
    for callers in CALLERS:
        of_ceiling = statistics.median(r[store][callers] / r[ceiling][callers] for r in speed)
        of_ref = statistics.median(r[store][callers] / r[ref][callers] for r in speed)
        print(
            f"\nRedis store, {callers} caller(s): {of_ceiling:.0%} of the bare EVALSHA ceiling, "
            f"{of_ref:.1f}x the `limits` moving window",
            end="",
        )
        if before is not None:
            old_name = f"Redis store before ({before[0]})"
            of_before = statistics.median(r[store][callers] / r[old_name][callers] for r in speed)
            print(f", {of_before:.2f}x the store before", end="")
    for name in table:
        if "fair-share ask" in name:
            per = {c: statistics.median(r[name][c] / r[store][c] for r in speed) for c in CALLERS}
            print(f"\n{name}: {per[1]:.2f}x (1 caller), {per[50]:.2f}x (50) the rate without", end="")
    print("\n(ratios: median of the per-round ratios)", end="")
    print("\n\n| us per admission, steady window | 10 entries | 100,000 entries | ratio |")
    print("|---|---:|---:|---:|")
    for name, row in cost.items():
        small, big = statistics.median(row[10]), statistics.median(row[100_000])
        ratio = statistics.median(b / a for a, b in zip(row[10], row[100_000], strict=True))
        print(f"| {name} | {small:.1f} | {big:.1f} | {ratio:.2f} |")
    print("(ratio: median of the per-round ratios)")
    print(f"\n(entries in the window when measured: {held[10]:,} and {held[100_000]:,})")
    if server is not None:
        (now_name, now_us), (old_name, old_us) = server.items()
        ratio = statistics.median(a / b for a, b in zip(now_us, old_us, strict=True))
        print("\n| Redis time per admission (INFO commandstats) | µs |\n|---|---:|")
        print(f"| script {old_name} | {statistics.median(old_us):.1f} |")
        print(f"| script {now_name} | {statistics.median(now_us):.1f} |")
        print(f"(now / before: {ratio:.2f}, median of the per-round ratios)")
    plain = fair_server["no ask"]
    print(
        "\n| Redis time per admission (INFO commandstats), fair-share ask | µs | / no ask |\n|---|---:|---:|"
    )
    for name, us in fair_server.items():
        ratio = statistics.median(a / b for a, b in zip(us, plain, strict=True))
        print(f"| {name} | {statistics.median(us):.1f} | {ratio:.2f} |")
    print("(ratio: median of the per-round ratios)")
    print(f"total run time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
