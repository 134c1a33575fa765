"""Shared fixtures: a real Redis (found or started) and real service processes."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.processes import private_redis

_SKIP_REASON: list[str] = []


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """REDIS_URL if set, else 127.0.0.1:6379, else a private redis-server on a free port."""
    candidates = [os.environ["REDIS_URL"]] if os.environ.get("REDIS_URL") else ["redis://127.0.0.1:6379/0"]
    for url in candidates:
        if _reachable(url):
            yield url
            return
    with private_redis() as url:
        if url is not None:
            yield url
            return
    reason = "no Redis: set REDIS_URL, run one on 127.0.0.1:6379, or install redis-server"
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(f"REQUIRE_REDIS=1 but {reason}")
    _SKIP_REASON.append(reason)
    pytest.skip(reason)


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests never share or clear each other's state."""
    return f"test-{uuid.uuid4().hex[:12]}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIP_REASON:
        terminalreporter.write_line(f"!!! REDIS TESTS SKIPPED: {_SKIP_REASON[0]} !!!", red=True, bold=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
