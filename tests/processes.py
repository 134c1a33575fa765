"""Real service processes on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
PORTS_BELOW_EPHEMERAL = 12_000
WORKER_SLICES = 8
_next_offset: list[int] = []


def free_port() -> int:
    """A free loopback port for a service to bind, below the kernel's ephemeral range.

    A port the kernel hands out (bind to 0) comes from the range that outgoing connections use
    too: with thousands of test connections on several workers, one of them sometimes took it
    before the service could bind it ("address already in use"). Below that range each xdist
    worker has a slice of its own, handed out in turn from a random start, so that two workers,
    or two services of one worker, are never given the same port."""
    if EPHEMERAL_RANGE.exists():
        low = int(EPHEMERAL_RANGE.read_text().split()[0])
        base = max(1024, low - PORTS_BELOW_EPHEMERAL)
        span = (low - base) // WORKER_SLICES
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        start = base + (worker % WORKER_SLICES) * span
        if not _next_offset:
            _next_offset.append(random.randrange(span))
        for _ in range(span):
            port = start + _next_offset[0]
            _next_offset[0] = (_next_offset[0] + 1) % span
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    """A running service: its base URL and process."""

    url: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    def status(self) -> dict:
        return httpx.get(f"{self.url}/status", timeout=5).json()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


@dataclass(frozen=True)
class Spec:
    """One service process to start: ``python -m module --host 127.0.0.1 --port P``."""

    module: str
    env: dict[str, str] | None = None
    port: int | None = None
    ready_path: str = "/healthz"
    output: Path | None = None


@contextmanager
def running(
    module: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
    ready_path: str = "/healthz",
    timeout: float = 30,
    output: Path | None = None,
) -> Iterator[Service]:
    """Start ``python -m module --host 127.0.0.1 --port P`` and wait until it answers; its
    stdout and stderr go to ``output`` when given."""
    with running_all(Spec(module, env, port, ready_path, output), timeout=timeout) as (service,):
        yield service


@contextmanager
def running_all(*specs: Spec, timeout: float = 30) -> Iterator[tuple[Service, ...]]:
    """Start every process at once, then wait until each answers; stopped in reverse order.

    Start-up is mostly imports, so processes started side by side are ready in about the time
    of one. A service that talks to another started here needs only its URL at start: give the
    other a port chosen with ``free_port()``."""
    with ExitStack() as stack:
        services = [stack.enter_context(_started(spec)) for spec in specs]
        deadline = time.monotonic() + timeout
        for spec, service in zip(specs, services, strict=True):
            _wait_ready(spec, service, deadline, timeout)
        yield tuple(services)


@contextmanager
def _started(spec: Spec) -> Iterator[Service]:
    port = spec.port or free_port()
    full_env = {**os.environ, **(spec.env or {})}
    sink = spec.output.open("wb") if spec.output is not None else None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", spec.module, "--host", "127.0.0.1", "--port", str(port)],
            env=full_env,
            stdout=sink,
            stderr=subprocess.STDOUT if sink is not None else None,
        )
        service = Service(f"http://127.0.0.1:{port}", port, proc)
        try:
            yield service
        finally:
            service.stop()
    finally:
        if sink is not None:
            sink.close()


def _wait_ready(spec: Spec, service: Service, deadline: float, timeout: float) -> None:
    while True:
        if service.process.poll() is not None:
            raise RuntimeError(f"{spec.module} exited with {service.process.returncode} before it was ready")
        try:
            if httpx.get(f"{service.url}{spec.ready_path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec.module} not ready after {timeout}s")
        time.sleep(0.05)


@contextmanager
def private_redis() -> Iterator[str | None]:
    """A redis-server of the test's own on a free port (its URL), or None without the binary.

    For what a test may only do to a Redis nobody else uses (SCRIPT FLUSH, restarts)."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="redis-test-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not _redis_answers(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
