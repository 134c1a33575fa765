"""Budget use: twice the budget offered for minutes, against a mock with the same limits.

Two set-ups run side by side on 127.0.0.1: one gateway (embedded store) and three gateway
processes sharing one Redis budget, each in front of its own mock with the same RPM and TPM
(every request costs the same, so both limits bind together). A load generator offers twice
the budget, open loop, for ``--duration`` seconds. Printed per set-up:

- achieved RPM and TPM over the steady state, as a share of the limits: answers counted over
  whole periods of the gateway's window (60 s + margin) after the first one, because with a
  backlog admissions repeat the first window's pattern and any other span is biased;
- the mock's own sliding-window counts (requests and tokens in its last 60 s, sampled every
  second): median and max, which must never exceed the limit;
- upstream 429s (the mock's count of rate-limited answers; target 0);
- queue wait p50/p99 of the answered requests (``x-apim-queue-ms``).

    python bench/gateway_budget.py [--duration 190] [--rpm 600]

This module also holds the process helpers the other benchmarks (``gateway_*``, ``mock_bench``,
``soak``) import.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import httpx
from _load import open_loop

HOST = "127.0.0.1"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Write one sentence about rate limits."}]
MAX_TOKENS = 100
UNLIMITED = {"RPM_LIMIT": "0", "TPM_LIMIT": "0", "RPD_LIMIT": "0", "TPD_LIMIT": "0"}
# Limits far above any load: none binds, yet each is set (0 would mean no limit at all).
HUGE = {
    "RPM_LIMIT": "1000000000",
    "TPM_LIMIT": "1000000000000",
    "RPD_LIMIT": "1000000000",
    "TPD_LIMIT": "1000000000000",
}
DEFAULT_MARGIN_MS = 500  # APIM_WINDOW_MARGIN_MS's default
PERIOD = 60 + DEFAULT_MARGIN_MS / 1000  # the gateway's window: admissions repeat with it
STEADY_FROM = 65.0  # seconds into the run: the first window has filled


@cache
def _workdir() -> tempfile.TemporaryDirectory[str]:
    # Made on first use, not on import: mock_bench's bare app process imports this module too.
    return tempfile.TemporaryDirectory(prefix="gateway-bench-")


def workdir() -> str:
    """The services' working directory (no stray .env), removed when this process exits."""
    return _workdir().name


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def status(self) -> dict:
        return httpx.get(f"{self.url}/status", timeout=10).json()


def wait_ready(process: subprocess.Popen[bytes], name: str, probe: Callable[[], httpx.Response]) -> None:
    """Return once ``probe`` answers 200; raise if ``process`` exits first or 30 s pass."""
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            if probe().status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready")
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextmanager
def service(module: str, env: dict[str, str], args: list[str] | None = None) -> Iterator[Service]:
    """``python -m module`` on a free loopback port, its log discarded; stopped on exit."""
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("APIM_", "MOCK_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--host", HOST, "--port", str(port), *(args or [])],
        env=clean | env,
        cwd=workdir(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    svc = Service(f"http://{HOST}:{port}", proc)
    try:
        wait_ready(proc, module, lambda: httpx.get(f"{svc.url}/healthz", timeout=1))
        yield svc
    finally:
        stop(proc)


def mock(**settings: str) -> AbstractContextManager[Service]:
    env = {f"MOCK_{k}": v for k, v in (UNLIMITED | settings).items()}
    return service("llm_mock_server", env)


def gateway(
    upstream: Service, source: Path | None = None, workers: int = 1, **settings: str
) -> AbstractContextManager[Service]:
    """A gateway in front of ``upstream``; with ``source``, the packages of that directory (an
    earlier revision's tree) instead of the installed ones; ``workers`` processes (``--workers``)."""
    env = {f"APIM_{k}": v for k, v in (UNLIMITED | settings).items()}
    env["APIM_UPSTREAM_URL"] = upstream.v1
    if source is not None:
        env["PYTHONPATH"] = str(source)
    return service("apim_server", env, ["--workers", str(workers)] if workers > 1 else [])


def revision_tree(rev: str) -> Path:
    """The source tree of git revision ``rev`` (``git archive``), in the work directory."""
    into = Path(workdir()) / f"rev-{rev}"
    if not into.exists():
        into.mkdir()
        root = Path(__file__).resolve().parent.parent
        tar = subprocess.run(["git", "archive", rev], cwd=root, capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
            archive.extractall(into, filter="data")
    return into


def redis_url() -> str | None:
    """REDIS_URL, else a Redis on 127.0.0.1:6379 if one answers."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis  # noqa: PLC0415 - only needed when a Redis set-up runs

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:  # noqa: BLE001 - no Redis: the caller skips that set-up
        return None
    return url


def request_cost() -> int:
    from ratelimit.cost import CostEstimator  # noqa: PLC0415 - keeps --help fast

    return CostEstimator().estimate({"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}).tokens


@dataclass
class Load:
    """Open-loop load against some gateways and what came back."""

    name: str
    gateways: list[Service]
    upstream: Service
    rpm: int
    tpm: int
    queue_ms: list[float] = field(default_factory=list)
    answered_at: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    samples: list[tuple[float, dict]] = field(default_factory=list)
    lags: list[dict] = field(default_factory=list)
    skipped: int = 0

    def collect_lags(self) -> None:
        """The gateways' dispatch lag (admission to request sent): what the margin must cover."""
        self.lags = [g.status()["dispatch_lag_ms"] for g in self.gateways]


async def offer(load: Load, rate_per_s: float, duration: float, started: float) -> None:
    """Send ``rate_per_s`` requests per second round-robin to the gateways for ``duration``."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=200)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600)) as client:

        async def one(gw: Service) -> None:
            try:
                response = await client.post(f"{gw.v1}/chat/completions", json=body)
            except httpx.HTTPError:
                load.statuses[-1] = load.statuses.get(-1, 0) + 1
                return
            load.statuses[response.status_code] = load.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                load.queue_ms.append(float(response.headers["x-apim-queue-ms"]))
                load.answered_at.append(time.monotonic() - started)

        # The offered load stops; whatever still waits is abandoned (callers hang up).
        load.skipped += await open_loop(
            lambda n: one(load.gateways[n % len(load.gateways)]), rate_per_s, duration, started
        )


async def sample(load: Load, duration: float, started: float) -> None:
    """The mock's own view every second: its sliding-window usage and counters."""
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < started + duration:
            status = (await client.get(f"{load.upstream.url}/status")).json()
            load.samples.append((time.monotonic() - started, status))
            await asyncio.sleep(1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def achieved_per_min(answered_at: list[float], steady_from: float, period: float, until: float) -> float:
    """Answers per minute over the whole periods that fit between ``steady_from`` and ``until``."""
    periods = int((until - steady_from) // period)
    if periods < 1:
        raise ValueError("the run is too short for one whole period after the first window")
    end = steady_from + periods * period
    count = sum(1 for t in answered_at if steady_from <= t < end)
    return count / (end - steady_from) * 60


def row(load: Load, until: float) -> str:
    steady = [s for t, s in load.samples if t >= STEADY_FROM]
    last = steady[-1]
    per_min = achieved_per_min(load.answered_at, STEADY_FROM, PERIOD, until)
    rpm_used = [s["limits"]["rpm"]["used"] / load.rpm for s in steady]
    tpm_used = [s["limits"]["tpm"]["used"] / load.tpm for s in steady]
    tokens_per_request = load.tpm / load.rpm
    return (
        f"| {load.name} | {per_min / load.rpm:.1%} | {per_min * tokens_per_request / load.tpm:.1%} "
        f"| {statistics.median(rpm_used):.1%} / {max(rpm_used):.1%} "
        f"| {statistics.median(tpm_used):.1%} / {max(tpm_used):.1%} "
        f"| {last['totals']['rate_limited']} "
        f"| {percentile(load.queue_ms, 0.5) / 1000:.1f} s / {percentile(load.queue_ms, 0.99) / 1000:.1f} s "
        f"| {max(lag['p99'] or 0 for lag in load.lags):.1f} / {max(lag['max'] for lag in load.lags):.1f} ms "
        f"| {load.statuses.get(200, 0)}{f' ({load.skipped} sends skipped)' if load.skipped else ''} |"
    )


def table(first_column: str, loads: list[Load], until: float) -> str:
    """The markdown table of the runs that ended ``until`` seconds after they began."""
    head = (
        f"| {first_column} | achieved RPM / limit | achieved TPM / limit | mock RPM window median / max "
        "| mock TPM window median / max | upstream 429s | queue wait p50 / p99 "
        "| dispatch lag p99 / max | answered 200 |"
    )
    return "\n".join(
        [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|", *(row(load, until) for load in loads)]
    )


async def run_loads(loads: list[Load], duration: float, factor: float) -> None:
    started = time.monotonic()
    await asyncio.gather(
        *(offer(load, factor * load.rpm / 60, duration, started) for load in loads),
        *(sample(load, duration, started) for load in loads),
    )


def measure(loads: list[Load], duration: float) -> None:
    """Offer each set-up twice its budget for ``duration`` seconds, then read its dispatch lags."""
    asyncio.run(run_loads(loads, duration, 2.0))
    for load in loads:
        load.collect_lags()


def options(doc: str) -> argparse.ArgumentParser:
    """A parser with the ``--duration`` of these benchmarks; parse with ``parse``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=190, help="seconds of offered load (default 190)")
    return parser


def parse(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if args.duration < 130:
        parser.error("--duration must be at least 130 s (one window fills, one whole window is measured)")
    return args


def main() -> int:
    parser = options(__doc__)
    parser.add_argument("--rpm", type=int, default=600, help="RPM limit of mock and gateways (default 600)")
    parser.add_argument("--ttft-ms", default="100", help="mock time to first token (default 100)")
    args = parse(parser)
    cost = request_cost()
    limits = {"RPM_LIMIT": str(args.rpm), "TPM_LIMIT": str(args.rpm * cost)}
    redis = redis_url()
    with ExitStack() as stack:
        loads = []
        up1 = stack.enter_context(mock(**limits, TTFT_MS=args.ttft_ms, LOG_REQUESTS="false"))
        gw1 = stack.enter_context(gateway(up1, **limits, LOG_REQUESTS="false"))
        loads.append(Load("1 gateway, embedded store", [gw1], up1, args.rpm, args.rpm * cost))
        if redis:
            up3 = stack.enter_context(mock(**limits, TTFT_MS=args.ttft_ms, LOG_REQUESTS="false"))
            shared = {
                "REDIS_URL": redis,
                "REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
                "LOG_REQUESTS": "false",
            }
            gws = [stack.enter_context(gateway(up3, **limits, **shared)) for _ in range(3)]
            loads.append(Load("3 gateways, one Redis budget", gws, up3, args.rpm, args.rpm * cost))
        else:
            print("no Redis reachable: the three-instance set-up is skipped", flush=True)
        print(
            f"offering 2x the budget ({2 * args.rpm} req/min, {cost} tokens each) for {args.duration:.0f} s "
            f"against RPM {args.rpm} / TPM {args.rpm * cost} ...",
            flush=True,
        )
        measure(loads, args.duration)

    print()
    print(
        f"Limits: RPM {args.rpm}, TPM {args.rpm * cost} (every request {cost} tokens), mock TTFT "
        f"{args.ttft_ms} ms; offered 2x for {args.duration:.0f} s; achieved rates over whole "
        f"{PERIOD:g} s periods from {STEADY_FROM:g} s; window samples from {STEADY_FROM:g} s. Ceiling with "
        f"the default margin: 60/{PERIOD:g} = {60 / PERIOD:.2%}."
    )
    print()
    print(table("set-up", loads, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
