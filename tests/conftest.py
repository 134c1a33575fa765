"""Shared fixtures: a real Redis (found or started), private Redis Cluster and Sentinel
topologies (started once per session, only when a test asks for them), real service processes."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import httpx._transports.default as httpx_transports
import pytest
import redis

from apim_server import tracing
from tests.processes import private_redis
from tests.topologies import Cluster, Sentinels

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
    _unavailable("no Redis: set REDIS_URL, run one on 127.0.0.1:6379, or install redis-server")


def _unavailable(reason: str) -> None:
    """Skip loudly, or fail under REQUIRE_REDIS=1."""
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(f"REQUIRE_REDIS=1 but {reason}")
    _SKIP_REASON.append(reason)
    pytest.skip(reason)


def _server_binary(what: str) -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable(f"no redis-server binary to start {what} with")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def redis_server_binary() -> str:
    """The redis-server binary, for tests that start a server of their own."""
    return _server_binary("a private Redis")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    """A private Redis Cluster: 3 masters, 3 replicas, cluster-node-timeout 1 s."""
    cluster = Cluster(_server_binary("a Redis Cluster"))
    try:
        try:
            cluster.start()
        except (RuntimeError, redis.RedisError, OSError) as exc:
            _unavailable(f"could not start a Redis Cluster: {exc}")
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def redis_sentinels() -> Iterator[Sentinels]:
    """A private Sentinel set: a master, a replica and three sentinels (down after 1 s)."""
    sentinels = Sentinels(_server_binary("a Sentinel set"))
    try:
        try:
            sentinels.start()
        except (RuntimeError, redis.RedisError, OSError) as exc:
            _unavailable(f"could not start a Sentinel set: {exc}")
        yield sentinels
    finally:
        sentinels.close()


@pytest.fixture(scope="session", autouse=True)
def one_tls_context() -> Iterator[None]:
    """One default TLS context for every httpx client of the session.

    httpx builds a TLS context, parsing the whole CA bundle (about 20 ms of CPU), for each client
    it makes, ``httpx.get()`` and the openai SDK's included, even for ``http://`` URLs. The suite
    makes thousands of loopback calls (polling loops ask every 20-50 ms), and that alone was a
    large share of its CPU. No test speaks TLS through httpx; a non-default ``verify`` or
    ``cert`` still gets a context of its own."""
    shared = httpx.create_ssl_context()
    build = httpx_transports.create_ssl_context

    def create(verify: Any = True, cert: Any = None, trust_env: bool = True) -> ssl.SSLContext:
        if verify is True and cert is None and trust_env:
            return shared
        return build(verify=verify, cert=cert, trust_env=trust_env)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpx_transports, "create_ssl_context", create)
        yield


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own, so tests never share or clear each other's state."""
    return f"test-{uuid.uuid4().hex[:12]}"


STARTED_FIRST = ("test_apim_budget.py",)
"""Files that wait out a real minute: run first, so that under ``make test`` (pytest-xdist,
one test file per worker at a time) the other workers run the rest meanwhile."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in STARTED_FIRST)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIP_REASON:
        for reason in dict.fromkeys(_SKIP_REASON):
            terminalreporter.write_line(f"!!! REDIS TESTS SKIPPED: {reason} !!!", red=True, bold=True)
    if not tracing.available():
        terminalreporter.write_line(
            f"!!! TRACING TESTS SKIPPED: the otel extra is not installed ({tracing.EXTRA}) !!!",
            red=True,
            bold=True,
        )


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0
