"""Soak: twice the budget for minutes through two gateway instances on one Redis, in front of one
mock with the same limits. Bounded, 127.0.0.1 only, stops itself.

What it checks and prints:

- every request sent is answered (sent = answered; an answer is any HTTP status: half the
  offered load cannot fit the budget: told so at once (429) when its predicted admission is past
  ``APIM_QUEUE_TIMEOUT_S``, else it waits and, if the prediction was wrong, gets 504);
- zero upstream 429s (the mock enforces the same limits: any over-admission shows there);
- resident memory (``VmRSS`` from ``/proc/PID/status``) of each process sampled every
  second: flat within 10% after the warm-up (the first fifth of the run, at least a minute);
- the budget used: the mock's answers per minute over whole windows of the steady state, and
  the peak of the mock's own sliding-window count (never above its limit);
- queue wait p50/p99 of the answered requests.

    python bench/soak.py [--minutes 10] [--rpm 600] [--tpm 200000] [--factor 2]

Redis: REDIS_URL, else 127.0.0.1:6379, else a private redis-server on a free port.
Exit status 0 only if every check holds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _load import open_loop
from gateway_budget import HOST, MODEL, Service, free_port, gateway, mock, percentile, redis_url

MESSAGES = [{"role": "user", "content": "Write a few sentences about queues and rate limits."}]
SAMPLE_EVERY_S = 1.0
DRAIN_LIMIT_S = 180.0
"""After the offered load stops, how long outstanding requests may take to be answered."""
RSS_TOLERANCE = 0.10
PERIOD_S = 60.5
"""The gateway's window: 60 s plus APIM_WINDOW_MARGIN_MS's default 500 ms."""
MAX_OUTSTANDING = 5000
"""A safety valve for this process; with the queue timeout below it is never reached."""


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Run:
    """What the load generator sent and got back, and the samples taken meanwhile."""

    sent: int = 0
    answered: int = 0
    lost: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    queue_ms: list[float] = field(default_factory=list)
    timeout_queue_ms: list[float] = field(default_factory=list)
    skipped: int = 0
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    mock_requests: list[tuple[float, int]] = field(default_factory=list)
    mock_window: list[tuple[float, int, int]] = field(default_factory=list)  # rpm, tpm used


async def offer(run: Run, gateways: list[Service], rate_per_s: float, duration: float, seed: int) -> None:
    """Open loop: ``rate_per_s`` requests per second round-robin; then wait for every answer."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=500)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(DRAIN_LIMIT_S)) as client:

        async def one(gw: Service, body: dict) -> None:
            try:
                if body.get("stream"):
                    async with client.stream("POST", f"{gw.v1}/chat/completions", json=body) as response:
                        await response.aread()
                else:
                    response = await client.post(f"{gw.v1}/chat/completions", json=body)
            except httpx.HTTPError as exc:
                run.lost.append(f"{type(exc).__name__}: {exc}")
                return
            run.answered += 1
            run.statuses[response.status_code] += 1
            waited = response.headers.get("x-apim-queue-ms")
            if waited is not None:
                (run.queue_ms if response.status_code == 200 else run.timeout_queue_ms).append(float(waited))

        async def send(n: int) -> None:
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": rng.randint(50, 450)}
            if rng.random() < 0.2:
                body["stream"] = True
            run.sent += 1
            await one(gateways[n % len(gateways)], body)

        run.skipped += await open_loop(
            send, rate_per_s, duration, time.monotonic(), MAX_OUTSTANDING, drain_s=DRAIN_LIMIT_S
        )


async def sample(run: Run, pids: dict[str, int], upstream: Service, stop: asyncio.Event) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            t = time.monotonic() - started
            for name, pid in pids.items():
                kib = rss_kib(pid)
                if kib is not None:
                    run.rss.setdefault(name, []).append((t, kib))
            try:
                status = (await client.get(f"{upstream.url}/status")).json()
                run.mock_requests.append((t, int(status["totals"]["requests"])))
                limits = status["limits"]
                run.mock_window.append((t, int(limits["rpm"]["used"]), int(limits["tpm"]["used"])))
            except httpx.HTTPError:
                pass
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)


def steady_rate(points: list[tuple[float, int]], start: float, end: float, period: float) -> float:
    """Requests per minute over the whole periods between ``start`` and ``end``: with a backlog,
    admissions repeat one window's pattern, so any other span is biased."""
    if len(points) < 2 or end - start < period:
        return float("nan")
    whole_end = start + (end - start) // period * period

    def at(t: float) -> tuple[float, int]:
        return min(points, key=lambda p: abs(p[0] - t))

    (t0, n0), (t1, n1) = at(start), at(whole_end)
    return (n1 - n0) / (t1 - t0) * 60 if t1 > t0 else float("nan")


def rss_report(run: Run, warm_s: float, until_s: float) -> tuple[list[str], bool]:
    lines = [
        "| process | RSS at warm-up end | min / max after | growth | flat (<= 10%) |",
        "|---|---|---|---|---|",
    ]
    flat = True
    for name, points in run.rss.items():
        after = [kib for t, kib in points if warm_s <= t <= until_s]
        if len(after) < 2:
            lines.append(f"| {name} | - | - | - | too few samples |")
            flat = False
            continue
        base, low, high = after[0], min(after), max(after)
        growth = high / base - 1
        ok = high / low - 1 <= RSS_TOLERANCE
        flat = flat and ok
        lines.append(
            f"| {name} | {base / 1024:.1f} MiB | {low / 1024:.1f} / {high / 1024:.1f} MiB "
            f"| {growth:+.1%} | {'yes' if ok else 'NO'} |"
        )
    return lines, flat


def private_redis(stack: ExitStack) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("soak: no Redis (set REDIS_URL, run one on 127.0.0.1:6379, or install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="soak-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)

    stack.callback(stop)
    time.sleep(0.5)
    return f"redis://{HOST}:{port}/0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the offered load (default 10)")
    parser.add_argument("--rpm", type=int, default=600, help="requests per minute of mock and gateways")
    parser.add_argument("--tpm", type=int, default=200_000, help="tokens per minute of mock and gateways")
    parser.add_argument("--factor", type=float, default=2.0, help="offered load as a multiple of --rpm")
    parser.add_argument("--queue-timeout", type=float, default=30.0, help="APIM_QUEUE_TIMEOUT_S (s)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be in (0, 60]")
    duration = args.minutes * 60
    warm_s = max(60.0, duration / 5) if duration >= 120 else duration / 3

    limits = {"RPM_LIMIT": str(args.rpm), "TPM_LIMIT": str(args.tpm)}
    with ExitStack() as stack:
        url = redis_url() or private_redis(stack)
        prefix = f"soak-{uuid.uuid4().hex[:8]}"
        upstream = stack.enter_context(
            mock(TTFT_MS="150", TOKENS_PER_S="2000", LOG_REQUESTS="false", **limits)
        )
        gateways = [
            stack.enter_context(
                gateway(
                    upstream,
                    REDIS_URL=url,
                    REDIS_PREFIX=prefix,
                    QUEUE_TIMEOUT_S=str(args.queue_timeout),
                    LOG_REQUESTS="false",
                    **limits,
                )
            )
            for _ in range(2)
        ]
        pids = {"mock": upstream.process.pid} | {
            f"gateway {i + 1}": g.process.pid for i, g in enumerate(gateways)
        }
        print(
            f"soak: {args.minutes:g} min at {args.factor:g}x RPM {args.rpm} / TPM {args.tpm} through "
            f"{len(gateways)} gateways on {url.rsplit('@', 1)[-1]} (prefix {prefix}), queue timeout "
            f"{args.queue_timeout:g} s, warm-up {warm_s:.0f} s",
            flush=True,
        )
        run = Run()

        async def go() -> float:
            stop = asyncio.Event()
            sampler = asyncio.create_task(sample(run, pids, upstream, stop))
            began = time.monotonic()
            await offer(run, gateways, args.factor * args.rpm / 60, duration, args.seed)
            drained = time.monotonic() - began
            stop.set()
            await sampler
            return drained

        elapsed = asyncio.run(go())
        statuses = [g.status() for g in gateways]
        mock_status = upstream.status()

    upstream_429 = int(mock_status["totals"]["rate_limited"])
    absorbed = sum(int(s["totals"]["upstream_429"]) for s in statuses)
    per_min = steady_rate(run.mock_requests, warm_s, duration, PERIOD_S)
    rpm_max = max((r for t, r, _ in run.mock_window if t >= warm_s), default=0)
    tpm_max = max((k for t, _, k in run.mock_window if t >= warm_s), default=0)
    rss_lines, flat = rss_report(run, warm_s, duration)
    answered_all = run.sent == run.answered and not run.lost

    print(f"\nsent {run.sent}, answered {run.answered}, lost {len(run.lost)}, skipped sends {run.skipped}")
    drained = elapsed - duration
    print(f"statuses: {dict(sorted(run.statuses.items()))} (drained in {drained:.0f} s after the load)")
    print(f"upstream 429s: {upstream_429} (gateways' count of upstream 429s: {absorbed})")
    print(
        f"budget used at the mock over whole {PERIOD_S:g} s periods of the steady state: {per_min:.0f}/min "
        f"= {per_min / args.rpm:.1%} of RPM; the mock's own last-60 s count peaked at {rpm_max} requests "
        f"/ {tpm_max} tokens (limits {args.rpm} / {args.tpm})"
    )
    print(
        f"queue wait of the answered 200s: p50 {percentile(run.queue_ms, 0.5) / 1000:.2f} s, "
        f"p99 {percentile(run.queue_ms, 0.99) / 1000:.2f} s (n={len(run.queue_ms)}); "
        f"of the others: p50 {percentile(run.timeout_queue_ms, 0.5) / 1000:.2f} s "
        f"(n={len(run.timeout_queue_ms)})"
    )
    print("\n" + "\n".join(rss_lines))
    for line in run.lost[:5]:
        print(f"lost: {line}")
    ok = answered_all and upstream_429 == 0 and flat
    print(
        f"\nsoak {'PASSED' if ok else 'FAILED'}: every request answered {answered_all}, "
        f"zero upstream 429s {upstream_429 == 0}, memory flat {flat}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
