"""The gateway's Redis goes away while requests are queued and in flight, then comes back.

A private redis-server on a free port (never the shared one): the gateway stays up, says it is
not ready, admits nothing while the shared budget is unknown (fail closed), and resumes on its
own; nothing queued is lost and the upstream, enforcing the same limits, never refuses one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import redis

from tests.processes import Service, free_port
from tests.test_apim_e2e import Background, chat, mock, mock_and_gateway, wait_for
from tests.test_security_gateway import logged_gateway


class PrivateRedis:
    """A redis-server of this test's own, which it can stop and start again on the same port.

    Append-only persistence, as a production Redis holding a rate-limit budget should have: a
    restart keeps the last minute's admissions.
    """

    def __init__(self, binary: str, persistent: bool = True) -> None:
        self.binary = binary
        self.persistent = persistent
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="apim-outage-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                self.dir,
                "--save",
                "",
                "--appendonly",
                "yes" if self.persistent else "no",
                "--appendfsync",
                "always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self.up, what="the private redis-server to answer")

    def up(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping())
        except (redis.RedisError, OSError):
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail("REQUIRE_REDIS=1 but no redis-server binary for the outage test")
        pytest.skip("no redis-server binary: the outage test needs a Redis it may stop")
    server = PrivateRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.remove()


@contextmanager
def stack(server: PrivateRedis, **limits: str) -> Iterator[tuple[Service, Service]]:
    """A slow mock and a gateway on ``server`` with the same limits."""
    with mock_and_gateway(
        {"TTFT_MS": "1500", **limits},
        REDIS_URL=server.url,
        REDIS_PREFIX=f"outage-{uuid.uuid4().hex[:8]}",
        MAX_CONCURRENCY="2",
        QUEUE_TIMEOUT_S="60",
        **limits,
    ) as (upstream, gw):
        yield upstream, gw


def ready(gw: Service) -> httpx.Response:
    return httpx.get(f"{gw.url}/readyz", timeout=5)


def test_queued_requests_wait_out_a_redis_outage(private_redis: PrivateRedis) -> None:
    n = 6
    with stack(private_redis, RPM_LIMIT=str(n), TPM_LIMIT="100000") as (upstream, gw):
        calls = [Background(lambda: chat(gw)) for _ in range(n)]
        wait_for(
            lambda: (q := gw.status()["queue"])["in_flight"] == 2 and q["depth"] == n - 2,
            what="two requests in flight and the rest queued",
        )

        private_redis.stop()
        wait_for(lambda: ready(gw).status_code == 503, what="/readyz to say not ready")
        assert ready(gw).json()["store"] is False
        assert httpx.get(f"{gw.url}/healthz", timeout=5).status_code == 200
        # The two in flight finish; nobody else is admitted without the shared budget.
        wait_for(lambda: gw.status()["queue"]["in_flight"] == 0, what="the in-flight requests to end")
        time.sleep(1.0)  # several admission attempts against the dead store
        status = gw.status()
        assert status["queue"]["depth"] == n - 2, "queued requests are held, not failed"
        assert "error" in status["limits"], "/status says the store is unavailable"
        assert upstream.status()["totals"]["requests"] == 2
        assert sum(c.done_at is not None for c in calls) == 2

        private_redis.start()
        answers = [c.join(60) for c in calls]
        assert [a.status_code for a in answers] == [200] * n
        wait_for(lambda: ready(gw).status_code == 200, what="/readyz to recover")

        totals = upstream.status()["totals"]
        assert totals["requests"] == n
        assert totals["rate_limited"] == 0, "the upstream never saw more than its limit"
        status = gw.status()
        assert status["limits"]["rpm"]["used"] == n, "the budget kept what was admitted before"
        assert status["totals"]["requests"] == n
        assert status["paused_s"] == 0, "a Redis that kept its record needs no extra pause"
        assert gw.process.poll() is None


def test_a_redis_that_comes_back_empty_holds_admission_for_a_window() -> None:
    """Without persistence a restarted Redis has forgotten the last minute: admitting at once could
    send a whole budget on top of what the upstream still counts, so admission waits until one
    window has passed since the outage began."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    server = PrivateRedis(binary, persistent=False)
    server.start()
    try:
        with stack(server, RPM_LIMIT="100", TPM_LIMIT="100000") as (upstream, gw):
            assert chat(gw).status_code == 200
            server.stop()
            wait_for(lambda: ready(gw).status_code == 503, what="/readyz to say not ready")
            # An idle gateway learns of the outage from its once-a-second cluster publication.
            wait_for(lambda: gw.status()["store_unreachable_s"] is not None, what="the outage noticed")
            server.start()
            held = Background(lambda: chat(gw))
            wait_for(lambda: gw.status()["paused_s"] > 0, what="admission to pause")
            status = gw.status()
            assert status["paused_s"] > 30, "about one window (60 s) after the outage began"
            assert status["limits"]["rpm"]["used"] == 0, "the record really is gone"
            assert status["queue"]["depth"] == 1
            assert held.done_at is None
            assert upstream.status()["totals"]["requests"] == 1
    finally:
        server.remove()


def test_an_outage_longer_than_the_queue_timeout_is_a_503_naming_the_store(
    private_redis: PrivateRedis, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with (
        mock(RPM_LIMIT="100") as upstream,
        logged_gateway(
            upstream,
            log,
            REDIS_URL=private_redis.url,
            REDIS_PREFIX=f"outage-{uuid.uuid4().hex[:8]}",
            RPM_LIMIT="100",
            QUEUE_TIMEOUT_S="2",
        ) as gw,
    ):
        assert chat(gw).status_code == 200
        private_redis.stop()
        response = chat(gw)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "store_unavailable"
        assert int(response.headers["retry-after"]) >= 1
        assert upstream.status()["totals"]["requests"] == 1
        private_redis.start()
        assert chat(gw).status_code == 200
    text = log.read_text()
    # Held and recovered, each said once, not once per retry.
    assert text.count("limiter store unreachable") == 1
    assert text.count("limiter store reachable again") == 1


def test_a_request_arriving_during_the_outage_is_held_then_served(private_redis: PrivateRedis) -> None:
    with stack(private_redis, RPM_LIMIT="100", TPM_LIMIT="100000") as (upstream, gw):
        assert chat(gw).status_code == 200
        private_redis.stop()
        late = Background(lambda: chat(gw))
        wait_for(lambda: gw.status()["queue"]["depth"] == 1, what="the new request to queue")
        time.sleep(1.0)
        assert late.done_at is None
        assert upstream.status()["totals"]["requests"] == 1
        private_redis.start()
        assert late.join(60).status_code == 200
        assert upstream.status()["totals"]["requests"] == 2
