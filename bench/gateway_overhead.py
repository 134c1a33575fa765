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

``--cors`` adds a gateway with ``APIM_CORS_ORIGINS=*`` (requests without an Origin, as
server-side clients send them) to measure what the CORS layer costs the hot path.

    python bench/gateway_overhead.py [--duration 10] [--rounds 3] [--connections 64] [--cors]
"""

from __future__ import annotations

import sys
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
from _load import Generator, Round, load_options, median_round
from gateway_budget import HUGE, gateway, mock, redis_url, workdir


def main() -> int:
    parser = load_options(__doc__, "target")
    parser.add_argument("--cors", action="store_true", help="add a gateway with APIM_CORS_ORIGINS=*")
    args = parser.parse_args()

    generate = Generator(Path(workdir()), {})

    redis = redis_url()
    with ExitStack() as stack:
        upstream = stack.enter_context(mock(**HUGE))
        targets = {
            "direct to the mock": upstream.v1,
            "through the gateway (embedded store)": stack.enter_context(gateway(upstream, **HUGE)).v1,
        }
        if args.cors:
            targets["through the gateway (embedded store, CORS on)"] = stack.enter_context(
                gateway(upstream, **HUGE, CORS_ORIGINS="*")
            ).v1
        if redis:
            on_redis = {"REDIS_URL": redis, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
            targets["through the gateway (Redis store)"] = stack.enter_context(
                gateway(upstream, **HUGE, **on_redis)
            ).v1
        urls = {name: f"{v1}/chat/completions" for name, v1 in targets.items()}
        status_urls = {name: v1.removesuffix("/v1") + "/status" for name, v1 in targets.items()}
        for url in urls.values():
            generate(url, 2, args.connections)  # warm-up: connections, encodings, caches

        results: dict[tuple[str, int], list[Round]] = {}
        for connections in (args.connections, 1):
            for i in range(args.rounds):
                for name, url in urls.items():
                    r = generate(url, args.duration, connections)
                    results.setdefault((name, connections), []).append(r)
                    print(f"round {i + 1} c={connections} {name}: {r}", flush=True)
        lags = {
            name: httpx.get(url, timeout=10).json()["dispatch_lag_ms"]
            for name, url in status_urls.items()
            if name != "direct to the mock"
        }

    print()
    print(
        f"Load: {generate.name}, {args.duration} s x {args.rounds} rounds per target and connection count, "
        "alternating; one uvicorn worker each; medians."
    )
    print()
    print("| target | connections | req/s | p50 ms | p99 ms | failed |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {key: median_round(rounds) for key, rounds in results.items()}
    for (name, connections), m in medians.items():
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
