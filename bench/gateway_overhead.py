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
``--json-logs`` adds a gateway with ``APIM_LOG_FORMAT=json``: what a JSON request line costs.
``--store`` picks the gateways' stores (``embedded``, ``redis``, or ``both``, the default; Redis
only if one answers). ``--before REV`` adds, for each store, the gateway as it was at git
revision REV (its tree from ``git archive``, run with the same settings), measured in the same
rounds: before/after side by side, with the after/before ratios of the medians. Each target's
own CPU time per request (user and system, from /proc, summed over its worker processes) is
printed too: steadier than rates when other processes share the machine.

``--stream`` sends streaming requests instead (``"stream": true``; the mock answers each in ~67
SSE chunks); ``--tokens-per-s N`` has the mock produce N tokens a second, as a model does (a
64-token answer then takes 64/N s), instead of answering at once. ``--workers N`` adds a
Redis-store gateway run with ``--workers N``: with cores to spare its throughput grows with N;
on a machine without them, its CPU time per request (all workers together) against the
one-worker gateway's says what N cores would give. ``--floor`` adds ``bare_proxy.py``: the same
HTTP stack (uvicorn, the connection protocol, the keep-alive transport) passing requests through
with no work of the gateway's own, the floor under any gateway built on it.

    python bench/gateway_overhead.py [--duration 10] [--rounds 3] [--connections 64] [--cors]
                                     [--json-logs] [--store both] [--before REV] [--stream]
                                     [--tokens-per-s N] [--workers N] [--floor]
"""

from __future__ import annotations

import os
import statistics
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
from _load import REQUEST, Generator, Round, load_options, median_round
from gateway_budget import HUGE, gateway, mock, redis_url, revision_tree, service, workdir

FLOOR = "bare uvicorn proxy (the floor: bench/bare_proxy.py)"


def cpu_s(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` and its live children (``--workers``) have
    used: steadier than wall-clock rates on a shared machine, since other processes' load does
    not count."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_s(child) for child in _children(pid))


def _children(pid: int) -> list[int]:
    try:
        return [
            int(c)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for c in (task / "children").read_text().split()
        ]
    except OSError:
        return []


def main() -> int:
    parser = load_options(__doc__, "target")
    parser.add_argument("--cors", action="store_true", help="add a gateway with APIM_CORS_ORIGINS=*")
    parser.add_argument("--json-logs", action="store_true", help="add a gateway with APIM_LOG_FORMAT=json")
    parser.add_argument("--store", choices=("embedded", "redis", "both"), default="both")
    parser.add_argument("--before", metavar="REV", help="also the gateway of this git revision, per store")
    parser.add_argument("--stream", action="store_true", help="streaming requests")
    parser.add_argument(
        "--tokens-per-s",
        type=float,
        default=0,
        help="the mock's output speed (MOCK_TOKENS_PER_S; default 0 = instant), as a model streams",
    )
    parser.add_argument("--workers", type=int, default=1, help="also a Redis-store gateway with N workers")
    parser.add_argument(
        "--floor", action="store_true", help="also bare_proxy.py: the same HTTP stack with no gateway work"
    )
    args = parser.parse_args()

    generate = Generator(Path(workdir()), {}, {**REQUEST, "stream": True} if args.stream else None)

    redis = redis_url() if args.store != "embedded" else None
    if args.store == "redis" and redis is None:
        print("no Redis answers (REDIS_URL or 127.0.0.1:6379)", file=sys.stderr)
        return 1
    sources: dict[str, Path | None] = {"": None}
    if args.before:
        sources[f" at {args.before}"] = revision_tree(args.before)
    with ExitStack() as stack:
        paced = {"TOKENS_PER_S": f"{args.tokens_per_s:g}"} if args.tokens_per_s else {}
        upstream = stack.enter_context(mock(**HUGE, **paced))
        services = {"direct to the mock": upstream}
        for suffix, source in sources.items():
            if args.store != "redis":
                services[f"through the gateway (embedded store){suffix}"] = stack.enter_context(
                    gateway(upstream, source, **HUGE)
                )
            if redis:
                on_redis = {"REDIS_URL": redis, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
                services[f"through the gateway (Redis store){suffix}"] = stack.enter_context(
                    gateway(upstream, source, **HUGE, **on_redis)
                )
        if redis and args.workers > 1:
            on_redis = {"REDIS_URL": redis, "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"}
            services[f"through the gateway (Redis store, {args.workers} workers)"] = stack.enter_context(
                gateway(upstream, workers=args.workers, **HUGE, **on_redis)
            )
        if args.cors:
            services["through the gateway (embedded store, CORS on)"] = stack.enter_context(
                gateway(upstream, **HUGE, CORS_ORIGINS="*")
            )
        if args.json_logs:
            services["through the gateway (embedded store, JSON logs)"] = stack.enter_context(
                gateway(upstream, **HUGE, LOG_FORMAT="json")
            )
        if args.floor:
            bench = str(Path(__file__).resolve().parent)
            env = {"BARE_UPSTREAM_URL": upstream.v1, "PYTHONPATH": bench}
            services[FLOOR] = stack.enter_context(service("bare_proxy", env))
        targets = {name: service.v1 for name, service in services.items()}
        urls = {name: f"{v1}/chat/completions" for name, v1 in targets.items()}
        status_urls = {name: v1.removesuffix("/v1") + "/status" for name, v1 in targets.items()}
        for url in urls.values():
            generate(url, 2, args.connections)  # warm-up: connections, encodings, caches

        results: dict[tuple[str, int], list[Round]] = {}
        cpu: dict[tuple[str, int], list[float]] = {}  # the target's own CPU µs per request
        for connections in (args.connections, 1):
            for i in range(args.rounds):
                for name, url in urls.items():
                    pid = services[name].process.pid
                    before = cpu_s(pid)
                    r = generate(url, args.duration, connections)
                    used = cpu_s(pid) - before
                    results.setdefault((name, connections), []).append(r)
                    cpu.setdefault((name, connections), []).append(used / (r.rps * args.duration) * 1e6)
                    print(f"round {i + 1} c={connections} {name}: {r}", flush=True)
        lags = {
            name: httpx.get(url, timeout=10).json()["dispatch_lag_ms"]
            for name, url in status_urls.items()
            if name not in ("direct to the mock", FLOOR)
        }

    print()
    print(
        f"Load: {generate.name}, {'streaming' if args.stream else 'non-streaming'} requests, "
        f"{args.duration} s x {args.rounds} rounds per target and connection count, alternating; one "
        "uvicorn worker each unless named; medians."
    )
    print()
    print("| target | connections | req/s | p50 ms | p99 ms | failed | its own CPU µs per request |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {key: median_round(rounds) for key, rounds in results.items()}
    for (name, connections), m in medians.items():
        own = statistics.median(cpu[(name, connections)])
        print(
            f"| {name} | {connections} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.failures} "
            f"| {own:.0f} |"
        )
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
    if args.before:
        print()
        suffix = f" at {args.before}"
        for name in urls:
            if name.endswith(suffix) or f"{name}{suffix}" not in urls:
                continue
            for connections in (args.connections, 1):
                now, then = medians[(name, connections)], medians[(f"{name}{suffix}", connections)]
                cpu_ratios = [
                    a / b
                    for a, b in zip(
                        cpu[(name, connections)], cpu[(f"{name}{suffix}", connections)], strict=True
                    )
                ]
                ratios = [
                    a.rps / b.rps
                    for a, b in zip(
                        results[(name, connections)], results[(f"{name}{suffix}", connections)], strict=True
                    )
                ]
                print(
                    f"{name}, {connections} connection(s), now / {args.before}: throughput "
                    f"{now.rps / then.rps:.3f} of the medians, {statistics.median(ratios):.3f} median of "
                    f"the per-round ratios ({', '.join(f'{r:.3f}' for r in ratios)}); "
                    f"p50 {now.p50_ms / then.p50_ms:.3f}, p99 {now.p99_ms / then.p99_ms:.3f}; "
                    f"its CPU per request {statistics.median(cpu_ratios):.3f} "
                    f"({', '.join(f'{r:.3f}' for r in cpu_ratios)})"
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
