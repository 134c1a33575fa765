"""Memory per waiting request, and health probes while the queue is full of them.

One mock and one gateway (uvicorn process, embedded store) on 127.0.0.1. The mock takes
``PLUG_S`` to answer; the gateway forwards one request at a time (``APIM_MAX_CONCURRENCY=1``)
and a first request holds that slot, so every later one waits in the queue with limits far
above the load (no prediction refuses it) and a queue timeout longer than the run. A client
holding raw sockets (one pre-built HTTP request each, no HTTP library) opens ``--waiting``
requests; once the gateway's queue depth says they all wait:

- RSS of the gateway (``VmRSS``) before the fill and with them waiting: bytes per waiting request;
- ``/healthz`` latency p50/p99 over ``--probes`` probes on a keep-alive connection of its own,
  taken one after another while they wait;
- then every client socket is closed: the time until the queue is empty, the RSS then, and that
  ``/healthz`` still answers. A second fill in the same process checks that nothing was kept
  (RSS with the second fill against the first).

Each run starts fresh processes; medians over ``--runs``. The gateway needs one file per
connection: ``--waiting`` is lowered to what the hard open-file limit allows, and says so.

With ``--source REV`` the gateway runs the tree of git revision REV (``git archive``) instead.

    python bench/queue_memory.py [--waiting 50000] [--runs 3] [--probes 300] [--source REV]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import statistics
import time
from dataclasses import dataclass

import uvloop
from gateway_budget import HOST, HUGE, MESSAGES, MODEL, Service, gateway, mock, percentile, revision_tree

PLUG_S = 3600
"""How long the mock takes to answer: the first request holds the gateway's only slot."""
RESERVED_FILES = 200
"""Files the gateway and the client keep besides the waiting requests' sockets."""
OPEN_AT_ONCE = 256
BODY = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 16}).encode()
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
    b"user-agent: OpenAI/Python 1.54.0\r\naccept: application/json\r\n"
    b"content-length: %d\r\n\r\n%s"
)
DEPTH = re.compile(rb"^apim_queue_depth (\S+)$", re.M)


@dataclass
class Fill:
    before_kb: int
    with_kb: int
    after_kb: int
    waiting: int
    fill_s: float
    drain_s: float
    probes_ms: list[float]
    healthy_after: bool

    @property
    def per_request(self) -> float:
        return (self.with_kb - self.before_kb) * 1024 / self.waiting


class Waiter(asyncio.Protocol):
    """One waiting request: sends its bytes, notes any answer (there should be none)."""

    answered = 0
    request = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(Waiter.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        Waiter.answered += 1


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Probe:
    """A keep-alive connection for ``/healthz`` and ``/metrics``."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)

    async def get(self, path: bytes) -> tuple[int, bytes]:
        try:
            return await self._get(path)
        except (asyncio.IncompleteReadError, ConnectionError):
            # Closed by the gateway's keep-alive timeout while the fill was being opened.
            self.writer.close()
            await self.open()
            return await self._get(path)

    async def _get(self, path: bytes) -> tuple[int, bytes]:
        self.writer.write(b"GET %s HTTP/1.1\r\nhost: %s\r\n\r\n" % (path, HOST.encode()))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
        return status, await self.reader.readexactly(length)

    async def healthz_ms(self) -> float:
        started = time.perf_counter()
        status, _ = await self.get(b"/healthz")
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}")
        return (time.perf_counter() - started) * 1000

    async def depth(self) -> int:
        _, body = await self.get(b"/metrics")
        found = DEPTH.search(body)
        return int(float(found.group(1))) if found else -1

    async def until_depth(self, want: int, limit_s: float) -> float:
        started = time.monotonic()
        while await self.depth() != want:
            if time.monotonic() - started > limit_s:
                raise RuntimeError(f"queue depth {await self.depth()} after {limit_s:g} s, expected {want}")
            await asyncio.sleep(0.1)
        return time.monotonic() - started


async def open_waiting(port: int, n: int) -> list[asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    for start in range(0, n, OPEN_AT_ONCE):
        made = await asyncio.gather(
            *(loop.create_connection(Waiter, HOST, port) for _ in range(min(OPEN_AT_ONCE, n - start)))
        )
        transports.extend(t for t, _ in made)
    return transports


async def fill(gw: Service, pid: int, port: int, probe: Probe, n: int, probes: int, depth0: int) -> Fill:
    before = rss_kb(pid)
    started = time.monotonic()
    transports = await open_waiting(port, n)
    await probe.until_depth(depth0 + n, 600)
    fill_s = time.monotonic() - started
    await asyncio.sleep(1)  # the disconnect watchers start after a short grace: let them
    await probe.healthz_ms()  # (re)opens the probe's connection: only a kept-alive one is timed
    latencies = [await probe.healthz_ms() for _ in range(probes)]
    with_n = rss_kb(pid)
    started = time.monotonic()
    for transport in transports:
        transport.close()
    drain_s = await probe.until_depth(depth0, 600)
    await asyncio.sleep(1)
    after = rss_kb(pid)
    healthy = await probe.healthz_ms() >= 0
    return Fill(before, with_n, after, n, fill_s, drain_s, latencies, healthy)


async def run_once(gw: Service, n: int, probes: int, fills: int) -> list[Fill]:
    port = int(gw.url.rsplit(":", 1)[1])
    pid = gw.process.pid
    probe = Probe(port)
    await probe.open()
    loop = asyncio.get_running_loop()
    plug, _ = await loop.create_connection(Waiter, HOST, port)  # takes the only slot, then waits
    await asyncio.sleep(0.5)
    # Warm-up: the code paths of a waiting request run once before the first measure.
    await fill(gw, pid, port, probe, 200, 10, 0)
    out = [await fill(gw, pid, port, probe, n, probes, 0) for _ in range(fills)]
    plug.close()
    if Waiter.answered:
        raise RuntimeError(f"{Waiter.answered} waiting requests got an answer: they were meant to wait")
    return out


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--waiting", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--probes", type=int, default=300)
    parser.add_argument("--fills", type=int, default=2, help="fills per run (the second checks for leaks)")
    parser.add_argument("--source", metavar="REV", help="run the gateway of this git revision")
    args = parser.parse_args()
    source = revision_tree(args.source) if args.source else None
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = args.waiting
    if hard != resource.RLIM_INFINITY and n > hard - RESERVED_FILES:
        n = hard - RESERVED_FILES
        print(f"open-file hard limit {hard}: {n} waiting requests instead of {args.waiting}")
    settings = HUGE | {
        "MAX_QUEUE": str(max(n + 1000, 50_000)),
        "QUEUE_SHARE_NORMAL_PCT": "100",
        "QUEUE_TIMEOUT_S": "3000",
        "MAX_CONCURRENCY": "1",
        "MAX_CONNECTIONS": str(n + 1000),
        "UPSTREAM_TIMEOUT_S": str(PLUG_S + 60),
        "SHUTDOWN_TIMEOUT_S": "1",
        "LOG_REQUESTS": "false",
    }
    runs: list[list[Fill]] = []
    for r in range(args.runs):
        slow = mock(**HUGE, TTFT_MS=str(PLUG_S * 1000))
        with slow as upstream, gateway(upstream, source, **settings) as gw:
            Waiter.request = REQUEST % (gw.url.split("//")[1].encode(), len(BODY), BODY)
            fills = uvloop.run(run_once(gw, n, args.probes, args.fills))
        runs.append(fills)
        for i, f in enumerate(fills, 1):
            print(
                f"run {r + 1} fill {i}: RSS {f.before_kb / 1024:.1f} -> {f.with_kb / 1024:.1f} MiB with "
                f"{f.waiting} waiting ({f.per_request:,.0f} B each), {f.after_kb / 1024:.1f} MiB after; "
                f"filled in {f.fill_s:.1f} s, emptied in {f.drain_s:.1f} s; /healthz p50 "
                f"{percentile(f.probes_ms, 0.5):.2f} ms p99 {percentile(f.probes_ms, 0.99):.2f} ms; "
                f"answers after: {f.healthy_after}"
            )
    first = [fills[0] for fills in runs]
    last = [fills[-1] for fills in runs]
    med = statistics.median
    print(f"\nmedians over {args.runs} runs, {n} waiting requests:")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| RSS before the first fill | {med(f.before_kb for f in first) / 1024:.1f} MiB |")
    print(f"| RSS with them waiting | {med(f.with_kb for f in first) / 1024:.1f} MiB |")
    print(f"| bytes per waiting request (first fill) | {med(f.per_request for f in first):,.0f} |")
    print(f"| /healthz p50 while waiting | {med(percentile(f.probes_ms, 0.5) for f in first):.2f} ms |")
    print(f"| /healthz p99 while waiting | {med(percentile(f.probes_ms, 0.99) for f in first):.2f} ms |")
    print(
        f"| time to fill / to empty after the hang-ups | {med(f.fill_s for f in first):.1f} s / "
        f"{med(f.drain_s for f in first):.1f} s |"
    )
    print(f"| RSS after they left | {med(f.after_kb for f in first) / 1024:.1f} MiB |")
    if len(runs[0]) > 1:
        growth = med((b.with_kb - a.with_kb) / 1024 for a, b in zip(first, last, strict=True))
        print(f"| RSS with the last fill minus with the first | {growth:+.1f} MiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
