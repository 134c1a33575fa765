"""Load for the benchmarks.

Closed loop, for throughput: ``wrk`` if installed, else httpx in this process; every connection
sends ``REQUEST`` (non-streaming) again as soon as the previous answer is in, for a fixed time; a
round reports throughput, latency percentiles and failed requests. Open loop, for budgets and
queues: ``open_loop`` sends at a fixed rate whatever is still unanswered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about rate limits."},
    ],
    "max_tokens": 64,
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %d %d %d %d %d %d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    failures: int

    def __str__(self) -> str:
        latency = f"p50 {self.p50_ms:.2f} ms p99 {self.p99_ms:.2f} ms"
        return f"{self.rps:,.0f} req/s {latency} failures {self.failures}"


def median_round(rounds: list[Round]) -> Round:
    """Medians of rate and latencies; failures summed, since any failure matters."""
    return Round(
        statistics.median(r.rps for r in rounds),
        statistics.median(r.p50_ms for r in rounds),
        statistics.median(r.p99_ms for r in rounds),
        sum(r.failures for r in rounds),
    )


def run_wrk(url: str, duration: int, connections: int, script: Path) -> Round:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    requests, duration_us, p50_us, p99_us, errors, non2xx = (int(v) for v in line.split()[1:])
    return Round(requests / (duration_us / 1e6), p50_us / 1000, p99_us / 1000, errors + non2xx)


async def httpx_load(
    url: str, duration: int, connections: int, headers: dict[str, str], request: dict[str, object]
) -> Round:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    failures = 0
    body = json.dumps(request).encode()
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        stop = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    ok = (await client.post(url, content=body, headers=headers)).status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                failures += not ok

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return Round(
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        failures,
    )


def load_options(doc: str, rounds_per: str) -> argparse.ArgumentParser:
    """A parser with the load flags: ``--duration``, ``--rounds`` per ``rounds_per``, ``--connections``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help=f"rounds per {rounds_per} (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    return parser


class Generator:
    """The load generator this machine has; ``name`` says which one for the output."""

    def __init__(
        self, workdir: Path, headers: dict[str, str], request: dict[str, object] | None = None
    ) -> None:
        self.headers = {"Content-Type": "application/json"} | headers
        self.request = REQUEST if request is None else request
        self.wrk = shutil.which("wrk") is not None
        self.name = "wrk (1 thread)" if self.wrk else "httpx (in-process asyncio; likely the bottleneck)"
        self.script = workdir / "post.lua"
        lines = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in self.headers.items())
        self.script.write_text(WRK_SCRIPT.format(body=json.dumps(self.request), headers=lines))

    def __call__(self, url: str, duration: int, connections: int) -> Round:
        if self.wrk:
            return run_wrk(url, duration, connections, self.script)
        return asyncio.run(httpx_load(url, duration, connections, self.headers, self.request))


async def open_loop(
    send: Callable[[int], Awaitable[None]],
    rate_per_s: float,
    duration: float,
    started: float,
    max_outstanding: int | None = 1000,
    drain_s: float = 0.0,
) -> int:
    """Start ``send(n)`` for n = 1, 2, ... at ``rate_per_s`` from ``started`` for ``duration`` s,
    on time whatever is still unanswered; returns how many sends were skipped because
    ``max_outstanding`` were unanswered (a backlog of thousands of open connections would load
    this process, and time its measurements late, without changing what a gateway admits).

    At the end, what still waits gets ``drain_s`` to finish, then is cancelled (callers hang up).
    """
    tasks: set[asyncio.Task[None]] = set()
    skipped = 0
    n = 0
    while (now := time.monotonic()) < started + duration:
        due = started + n / rate_per_s
        if due > now:
            await asyncio.sleep(due - now)
        n += 1
        if max_outstanding is not None and len(tasks) >= max_outstanding:
            skipped += 1
            continue
        task = asyncio.create_task(send(n))  # type: ignore[arg-type]
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks and drain_s > 0:
        await asyncio.wait(tasks, timeout=drain_s)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return skipped
