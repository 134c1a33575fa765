"""Real service processes on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
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
    port = port or free_port()
    full_env = {**os.environ, **(env or {})}
    sink = output.open("wb") if output is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)],
        env=full_env,
        stdout=sink,
        stderr=subprocess.STDOUT if sink is not None else None,
    )
    service = Service(f"http://127.0.0.1:{port}", port, proc)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{module} exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(f"{service.url}{ready_path}", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{module} not ready after {timeout}s")
            time.sleep(0.05)
        yield service
    finally:
        service.stop()
        if sink is not None:
            sink.close()


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
