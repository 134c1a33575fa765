"""Mock server throughput next to a bare uvicorn app answering the same JSON.

Both servers run as one uvicorn worker on 127.0.0.1; a load generator keeps 64 connections
busy with non-streaming chat requests for a fixed time per round, alternating the servers
round by round so machine noise hits both alike. Prints a markdown table of medians and the
mock/bare ratio. The mock runs with its defaults (request log on, embedded store) except
zero latency and limits too large to bind, so every request goes through the full limiter
path and gets its ``x-ratelimit-*`` headers.

Load generator: ``wrk`` if installed (``apt-get install wrk``), else an httpx client in this
process (which is then likely the bottleneck; the table says which one ran).

    python bench/mock_bench.py [--duration 10] [--rounds 3] [--connections 64]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import uvicorn
from _load import REQUEST, Generator, Round, load_options, median_round
from gateway_budget import HOST, HUGE, free_port, mock, stop, wait_ready
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

MOCK = HUGE | {"TTFT_MS": "0", "TOKENS_PER_S": "0"}


def bare_app(body: bytes) -> Starlette:
    """The reference: the smallest Starlette app that answers the mock's JSON."""

    async def chat(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def serve_bare(port: int, body_file: str) -> None:
    app = bare_app(Path(body_file).read_bytes())
    uvicorn.run(app, host=HOST, port=port, workers=1, access_log=False, log_level="warning")


@contextmanager
def bare_server(body_file: Path) -> Iterator[str]:
    """This script's bare app in its own process; yields its URL once it answers."""
    port = free_port()
    me = Path(__file__).resolve()
    proc = subprocess.Popen(
        [sys.executable, str(me), "--serve-bare", str(port), str(body_file)], cwd=me.parent.parent
    )
    url = f"http://{HOST}:{port}/v1/chat/completions"
    try:
        # No /healthz on the bare app: it is ready when it answers the request itself.
        wait_ready(proc, "the bare app", lambda: httpx.post(url, json=REQUEST, timeout=2))
        yield url
    finally:
        stop(proc)


def main() -> int:
    parser = load_options(__doc__, "server")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "BODY_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return 0

    with tempfile.TemporaryDirectory(prefix="mock-bench-") as tmp, ExitStack() as stack:
        generate = Generator(Path(tmp), {"Authorization": "Bearer sk-bench"})
        # The request log of the mock with defaults is written, then discarded.
        mock_url = stack.enter_context(mock(**MOCK)).v1 + "/chat/completions"
        quiet_url = stack.enter_context(mock(**MOCK, LOG_REQUESTS="false")).v1 + "/chat/completions"
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(httpx.post(mock_url, json=REQUEST, timeout=5).content)
        bare_url = stack.enter_context(bare_server(body_file))

        servers = {
            "bare uvicorn + Starlette": bare_url,
            "llm-mock (defaults)": mock_url,
            "llm-mock, MOCK_LOG_REQUESTS=false": quiet_url,
        }
        results: dict[str, list[Round]] = {name: [] for name in servers}
        for url in servers.values():
            generate(url, 2, args.connections)  # warm-up
        for i in range(args.rounds):
            for name, url in servers.items():
                r = generate(url, args.duration, args.connections)
                results[name].append(r)
                print(f"round {i + 1} {name}: {r}", flush=True)

    print()
    print(
        f"Load: {generate.name}, {args.connections} connections, {args.duration} s x {args.rounds} rounds "
        "per server, alternating; one uvicorn worker each; medians."
    )
    print()
    print("| server | req/s | p50 ms | p99 ms | failed requests |")
    print("|---|---:|---:|---:|---:|")
    for name, rounds in results.items():
        m = median_round(rounds)
        print(f"| {name} | {m.rps:,.0f} | {m.p50_ms:.2f} | {m.p99_ms:.2f} | {m.failures} |")
    print()
    bare_rounds = next(iter(results.values()))
    for name, rounds in list(results.items())[1:]:
        # Each round's ratio pairs runs seconds apart, so load from elsewhere cancels out best.
        per_round = [m.rps / b.rps for m, b in zip(rounds, bare_rounds, strict=True)]
        print(
            f"{name} / bare throughput: {statistics.median(per_round):.2f} "
            f"(median of per-round ratios {', '.join(f'{r:.2f}' for r in per_round)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
