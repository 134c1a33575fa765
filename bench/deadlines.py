"""Deadlines: twice a paced budget offered with a short caller deadline; how honest the gateway is.

One mock and one gateway on 127.0.0.1 with the same limits: RPM ``--rpm`` paced over 1 s
sub-windows, as Azure enforces them; the gateway on the embedded store, then, if a Redis answers
(REDIS_URL or 127.0.0.1:6379), on Redis under a fresh prefix. A load generator offers twice the
budget, open loop, for ``--duration`` seconds, every request with
``x-apim-timeout-ms: --timeout-ms``. Printed:

- answers by status: 200 (admitted), 429 (told at once it cannot fit before its deadline), 504
  (the prediction was wrong: it timed out in the queue), anything else;
- the 429s' latency p50/p99 (how "at once" it is) and their ``retry-after-ms`` p50;
- per admitted request, the prediction error ``x-apim-queue-ms - x-apim-expected-wait-ms``:
  p50/p99 of its absolute value, and the share admitted within 1 s of the prediction;
- budget use: admitted per second over the run against the paced ceiling; upstream 429s.

    python bench/deadlines.py [--duration 40] [--rpm 600] [--timeout-ms 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import httpx
from gateway_budget import MESSAGES, MODEL, gateway, mock, percentile, redis_url


async def offer(url: str, rate_per_s: float, duration: float, timeout_ms: int) -> list[tuple]:
    """Open-loop arrivals at ``rate_per_s``; each result is (status, latency_s, headers, done_s)
    with ``done_s`` the answer's time since the first arrival."""
    results: list[tuple] = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def one() -> None:
            started = time.monotonic()
            done = lambda: time.monotonic() - start  # noqa: E731
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 16}
            try:
                r = await client.post(
                    f"{url}/chat/completions", json=body, headers={"x-apim-timeout-ms": str(timeout_ms)}
                )
                results.append((r.status_code, time.monotonic() - started, r.headers, done()))
            except httpx.HTTPError as exc:
                results.append((type(exc).__name__, time.monotonic() - started, {}, done()))

        tasks = []
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < duration:
            due = start + n / rate_per_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
            n += 1
        await asyncio.gather(*tasks)
    return results


def report(results: list[tuple], duration: float, ceiling_per_s: float, upstream_429: int) -> None:
    by_status: dict[object, int] = {}
    for status, *_ in results:
        by_status[status] = by_status.get(status, 0) + 1
    answers = dict(sorted(by_status.items(), key=str))
    print(f"offered {len(results)} requests in {duration:g} s; answers: {answers}")
    refused = [r for r in results if r[0] == 429]
    if refused:
        lat = [r[1] * 1000 for r in refused]
        waits = [int(r[2]["retry-after-ms"]) for r in refused]
        print(
            f"429 latency p50 {percentile(lat, 0.5):.1f} ms, p99 {percentile(lat, 0.99):.1f} ms; "
            f"retry-after-ms p50 {statistics.median(waits):.0f}"
        )
    served = [r for r in results if r[0] == 200]
    if served:
        errors = [
            (int(r[2]["x-apim-queue-ms"]) - int(r[2]["x-apim-expected-wait-ms"])) / 1000 for r in served
        ]
        absolute = [abs(e) for e in errors]
        within = sum(1 for e in absolute if e <= 1.0) / len(absolute)
        print(
            f"prediction error |actual - predicted| p50 {percentile(absolute, 0.5):.3f} s, "
            f"p99 {percentile(absolute, 0.99):.3f} s, mean signed {statistics.fmean(errors):+.3f} s; "
            f"within 1 s: {within:.1%}"
        )
        # Over the span the admissions took: the last arrivals are served up to a deadline later.
        span = max(r[3] for r in served)
        print(
            f"admitted {len(served) / span:.2f}/s over {span:.1f} s against a paced ceiling of "
            f"{ceiling_per_s:.2f}/s; upstream 429s: {upstream_429}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--timeout-ms", type=int, default=5000)
    args = parser.parse_args()
    limits = {"RPM_LIMIT": str(args.rpm), "SHORT_WINDOW_S": "1"}
    per_window = max(1, args.rpm // 60)
    ceiling = per_window / 1.5  # the gateway's 1 s sub-window is 1.5 s long with the default margin
    stores = {"embedded store": {}}
    url = redis_url()
    if url is not None:
        stores["Redis"] = {"REDIS_URL": url, "REDIS_PREFIX": f"bench-deadlines-{uuid.uuid4().hex[:8]}"}
    for name, store in stores.items():
        with mock(**limits) as upstream, gateway(upstream, LOG_REQUESTS="false", **limits, **store) as gw:
            results = asyncio.run(offer(gw.v1, 2 * args.rpm / 60, args.duration, args.timeout_ms))
            upstream_429 = upstream.status()["totals"]["rate_limited"]
        print(
            f"[{name}] RPM {args.rpm} over 1 s sub-windows, twice the budget offered, "
            f"deadline {args.timeout_ms} ms"
        )
        report(results, args.duration, ceiling, upstream_429)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
