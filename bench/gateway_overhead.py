"""Gateway overhead: the mock directly vs the mock through the gateway, budgets not binding.

One mock and the gateway(s) in front of it run as one uvicorn worker each on 127.0.0.1 with
their default logging (written, then discarded) and limits far above the load, so every
request takes the full path: validation, cost estimate, admission through the limiter,
forwarding on the keep-alive pool, usage settlement, log line. The load generator keeps
``--connections`` connections busy with non-streaming requests for ``--duration`` seconds
per round, alternating the targets round by round so machine noise hits all alike; a
second series with one connection shows the added latency of one hop without queueing.
Prints a markdown table of medians and the gateway/direct ratios.

Load generator: ``wrk`` if installed (``apt-get install wrk``), else httpx in this process
(then likely the bottleneck; the output says which one ran).

    python bench/gateway_overhead.py [--duration 10] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
from gateway_budget import WORKDIR, gateway, mock, redis_url

REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about rate limits."},
    ],
    "max_tokens": 64,
}
HUGE = {
    "RPM_LIMIT": "1000000000",
    "TPM_LIMIT": "1000000000000",
    "RPD_LIMIT": "1000000000",
    "TPD_LIMIT": "1000000000000",
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT %%d %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Round:
    rps: float
    p50_ms: float
    p99_ms: float
    failures: int


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


async def httpx_load(url: str, duration: int, connections: int) -> Round:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    failures = 0
    body = json.dumps(REQUEST).encode()
    headers = {"content-type": "application/json"}
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    args = parser.parse_args()

    wrk = shutil.which("wrk")
    generator = "wrk (1 thread)" if wrk else "httpx (in-process asyncio; likely the bottleneck)"
    script = Path(WORKDIR) / "post.lua"
    script.write_text(WRK_SCRIPT % json.dumps(REQUEST))

    def load(url: str, duration: int, connections: int) -> Round:
        if wrk:
            return run_wrk(url, duration, connections, script)
        return asyncio.run(httpx_load(url, duration, connections))

    redis = redis_url()
    with ExitStack() as stack:
        upstream = stack.enter_context(mock(**HUGE))
        targets = {
            "direct to the mock": upstream.v1,
            "through the gateway (embedded store)": stack.enter_context(gateway(upstream, **HUGE)).v1,
        }
        if redis:
            on_redis = {"REDIS_URL": redis, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
            targets["through the gateway (Redis store)"] = stack.enter_context(
                gateway(upstream, **HUGE, **on_redis)
            ).v1
        urls = {name: f"{v1}/chat/completions" for name, v1 in targets.items()}
        status_urls = {name: v1.removesuffix("/v1") + "/status" for name, v1 in targets.items()}
        for url in urls.values():
            load(url, 2, args.connections)  # warm-up: connections, encodings, caches

        results: dict[tuple[str, int], list[Round]] = {}
        for connections in (args.connections, 1):
            for i in range(args.rounds):
                for name, url in urls.items():
                    r = load(url, args.duration, connections)
                    results.setdefault((name, connections), []).append(r)
                    print(
                        f"round {i + 1} c={connections} {name}: {r.rps:,.0f} req/s p50 {r.p50_ms:.2f} ms "
                        f"p99 {r.p99_ms:.2f} ms failures {r.failures}",
                        flush=True,
                    )
        lags = {
            name: httpx.get(url, timeout=10).json()["dispatch_lag_ms"]
            for name, url in status_urls.items()
            if name != "direct to the mock"
        }

    print()
    print(
        f"Load: {generator}, {args.duration} s x {args.rounds} rounds per target and connection count, "
        "alternating; one uvicorn worker each; medians."
    )
    print()
    print("| target | connections | req/s | p50 ms | p99 ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    medians: dict[tuple[str, int], Round] = {}
    for (name, connections), rounds in results.items():
        m = Round(
            statistics.median(r.rps for r in rounds),
            statistics.median(r.p50_ms for r in rounds),
            statistics.median(r.p99_ms for r in rounds),
            sum(r.failures for r in rounds),
        )
        medians[(name, connections)] = m
        print(f"| {name} | {connections} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.failures} |")
    print()
    direct = "direct to the mock"
    for name in urls:
        if name == direct:
            continue
        for connections in (args.connections, 1):
            gw, base = medians[(name, connections)], medians[(direct, connections)]
            print(
                f"{name}, {connections} connection(s): throughput {gw.rps / base.rps:.2f} of direct, "
                f"added p50 {gw.p50_ms - base.p50_ms:+.2f} ms"
            )
    print()
    for name, lag in lags.items():
        print(
            f"{name}: dispatch lag (admission to request sent) p50 {lag['p50']} ms, p99 {lag['p99']} ms, "
            f"max {lag['max']} ms over the whole run, window margin {lag['margin']} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
