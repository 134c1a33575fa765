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
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

HOST = "127.0.0.1"
REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write one sentence about rate limits."},
    ],
    "max_tokens": 64,
}
HUGE_LIMITS = {
    "MOCK_RPM_LIMIT": "1000000000",
    "MOCK_TPM_LIMIT": "1000000000000",
    "MOCK_RPD_LIMIT": "1000000000",
    "MOCK_TPD_LIMIT": "1000000000000",
    "MOCK_TTFT_MS": "0",
    "MOCK_TOKENS_PER_S": "0",
}
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[%s]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
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


def bare_app(body: bytes) -> Starlette:
    """The reference: the smallest Starlette app that answers the mock's JSON."""

    async def chat(request: Request) -> Response:
        await request.body()
        return Response(body, media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def serve_bare(port: int, body_file: str) -> None:
    app = bare_app(Path(body_file).read_bytes())
    uvicorn.run(app, host=HOST, port=port, workers=1, access_log=False, log_level="warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.post(url, json=REQUEST, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


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


async def _httpx_load(url: str, duration: int, connections: int) -> Round:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    latencies: list[float] = []
    failures = 0
    body = json.dumps(REQUEST).encode()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    async with httpx.AsyncClient(limits=limits, timeout=10) as client:
        stop = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal failures
            while time.perf_counter() < stop:
                started = time.perf_counter()
                try:
                    response = await client.post(url, content=body, headers=headers)
                    ok = response.status_code == 200
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections (default 64)")
    parser.add_argument("--serve-bare", nargs=2, metavar=("PORT", "BODY_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(int(args.serve_bare[0]), args.serve_bare[1])
        return 0

    wrk = shutil.which("wrk")
    generator = "wrk (1 thread)" if wrk else "httpx (in-process asyncio; likely the bottleneck)"
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOCK_")} | HUGE_LIMITS
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="mock-bench-") as tmp:
        try:

            def start_mock(extra: dict[str, str]) -> str:
                port = free_port()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "llm_mock_server", "--host", HOST, "--port", str(port)],
                    env=env | extra,
                    cwd=tmp,  # no stray .env
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,  # the request log is written, then discarded
                )
                procs.append(proc)
                url = f"http://{HOST}:{port}/v1/chat/completions"
                wait_ready(url, proc)
                return url

            mock_url = start_mock({})
            quiet_url = start_mock({"MOCK_LOG_REQUESTS": "false"})
            body_file = Path(tmp) / "body.json"
            body_file.write_bytes(httpx.post(mock_url, json=REQUEST, timeout=5).content)

            bare_port = free_port()
            me = str(Path(__file__).resolve())
            bare = subprocess.Popen(
                [sys.executable, me, "--serve-bare", str(bare_port), str(body_file)], cwd=root
            )
            procs.append(bare)
            bare_url = f"http://{HOST}:{bare_port}/v1/chat/completions"
            wait_ready(bare_url, bare)

            script = Path(tmp) / "post.lua"
            script.write_text(WRK_SCRIPT % json.dumps(REQUEST))

            def load(url: str, duration: int) -> Round:
                if wrk:
                    return run_wrk(url, duration, args.connections, script)
                return asyncio.run(_httpx_load(url, duration, args.connections))

            servers = {
                "bare uvicorn + Starlette": bare_url,
                "llm-mock (defaults)": mock_url,
                "llm-mock, MOCK_LOG_REQUESTS=false": quiet_url,
            }
            results: dict[str, list[Round]] = {name: [] for name in servers}
            for url in servers.values():
                load(url, 2)  # warm-up
            for i in range(args.rounds):
                for name, url in servers.items():
                    r = load(url, args.duration)
                    results[name].append(r)
                    print(
                        f"round {i + 1} {name}: {r.rps:,.0f} req/s p50 {r.p50_ms:.2f} ms "
                        f"p99 {r.p99_ms:.2f} ms failures {r.failures}",
                        flush=True,
                    )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()

    print()
    print(
        f"Load: {generator}, {args.connections} connections, {args.duration} s x {args.rounds} rounds "
        "per server, alternating; one uvicorn worker each; medians."
    )
    print()
    print("| server | req/s | p50 ms | p99 ms | failed requests |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for name, rounds in results.items():
        rps = statistics.median(r.rps for r in rounds)
        medians[name] = rps
        p50 = statistics.median(r.p50_ms for r in rounds)
        p99 = statistics.median(r.p99_ms for r in rounds)
        failed = sum(r.failures for r in rounds)
        print(f"| {name} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {failed} |")
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
