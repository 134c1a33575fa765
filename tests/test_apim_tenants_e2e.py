"""Tenants end to end (SPEC §10): fair shares within a gateway and across gateways on one Redis,
sub-limits over all of a tenant's traffic, per-tenant views. Real mock and gateway processes, the
official SDK. Budgets are paced over 1 s sub-windows so that contention is seconds, not minutes.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import Service, running, running_all
from tests.test_apim_budgets_e2e import mock_totals, mock_with
from tests.test_apim_e2e import MESSAGES, gateway_env, metric, wait_for

MODEL = "gpt-4o"


def config(tmp_path: Path, upstream: Service, rpm: int, tenants: list[str]) -> Path:
    path = tmp_path / f"apim-{uuid.uuid4().hex[:6]}.yaml"
    lines = [
        "deployments:",
        f"  - {{name: mock, url: {upstream.v1}, short_window_s: 1, models: {{{MODEL}: {{rpm: {rpm}}}}}}}",
        "tenants:",
        *(f"  - {t}" for t in tenants),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def mock_running(tmp_path: Path, models: dict[str, int]) -> Iterator[Service]:
    with running_all(mock_with(tmp_path, models)) as (service,):
        yield service


@contextmanager
def gateway_with(path: Path, **settings: str) -> Iterator[Service]:
    env = gateway_env("http://127.0.0.1:9/v1", CONFIG=str(path), **settings)
    with running("apim_server", env=env) as service:
        yield service


class Log:
    """Requests on threads; the order in which they were answered, by label."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.answered: list[str] = []
        self.codes: list[int] = []  # by answer order
        self.statuses: dict[str, list[int]] = {}
        self.threads: list[threading.Thread] = []

    def send(
        self, gw: Service, key: str, label: str, n: int = 1, max_tokens: int = 4, **headers: str
    ) -> None:
        for _ in range(n):
            thread = threading.Thread(
                target=self._one, args=(gw, key, label, max_tokens, headers), daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def _one(self, gw: Service, key: str, label: str, max_tokens: int, headers: dict[str, str]) -> None:
        body = {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens}
        sent = {"authorization": f"Bearer {key}", **headers}
        status = httpx.post(f"{gw.v1}/chat/completions", json=body, headers=sent, timeout=60).status_code
        with self.lock:
            self.answered.append(label)
            self.codes.append(status)
            self.statuses.setdefault(label, []).append(status)

    def mark(self, label: str) -> None:
        """A point in the answer order (e.g. when other requests were sent)."""
        with self.lock:
            self.answered.append(label)
            self.codes.append(0)

    def ok(self, i: int) -> bool:
        """Whether the ``i``-th entry of the answer order was a 200."""
        return self.codes[i] == 200

    def join(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "requests still waiting"


def test_a_flooding_tenant_lengthens_only_its_own_waits(tmp_path: Path) -> None:
    with mock_running(tmp_path, {MODEL: 240}) as upstream:  # 4 per second
        path = config(
            tmp_path, upstream, 240, ["{name: flood, key: sk-flood}", "{name: light, key: sk-light}"]
        )
        with gateway_with(path) as gw:
            log = Log()
            log.send(gw, "sk-flood", "flood", 24)  # six seconds of the budget
            wait_for(lambda: gw.status()["queue"]["depth"] >= 12, what="the flood to queue")
            log.send(gw, "sk-light", "light", 3)
            log.join()
            assert log.statuses["flood"] == [200] * 24 and log.statuses["light"] == [200] * 3
            # Each light request went after about one flood request, not after the whole flood.
            last_light = max(i for i, who in enumerate(log.answered) if who == "light")
            flood_before = sum(1 for who in log.answered[:last_light] if who == "flood")
            assert flood_before <= 24 - 12 + 4, log.answered
            assert mock_totals(upstream)["rate_limited"] == 0
            tenants = gw.status()["tenants"]
            assert tenants["flood"]["admitted_per_min"] == 24 and tenants["light"]["admitted_per_min"] == 3
            assert tenants["light"]["wait_p99_s"] < tenants["flood"]["wait_p99_s"]
            share = tenants["flood"]["budgets_last_minute"][f"mock/{MODEL}"]
            assert share["requests"] == 24 and share["share"] == pytest.approx(24 / 240, abs=1e-3)
            assert metric(gw, "apim_tenant_admitted_total", tenant="light") == 3
            assert metric(gw, "apim_tenant_queue_wait_seconds_count", tenant="flood") == 24


def test_a_tenant_over_its_sub_limit_waits_alone_and_is_told_at_once(tmp_path: Path) -> None:
    with mock_running(tmp_path, {MODEL: 600}) as upstream:
        tenants = ["{name: capped, key: sk-capped, rpm: 3}", "{name: free, key: sk-free}"]
        path = config(tmp_path, upstream, 600, tenants)
        with gateway_with(path) as gw:
            capped = openai.OpenAI(base_url=gw.v1, api_key="sk-capped", max_retries=0)
            free = openai.OpenAI(base_url=gw.v1, api_key="sk-free", max_retries=0)
            for _ in range(3):
                capped.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
            # Its sub-limit frees in a minute: past a 2 s deadline, so a 429 at once, naming it.
            started = time.monotonic()
            with pytest.raises(openai.RateLimitError) as caught:
                capped.chat.completions.create(
                    model=MODEL,
                    messages=MESSAGES,  # type: ignore[arg-type]
                    max_tokens=4,
                    extra_headers={"x-apim-timeout-ms": "2000"},
                )
            assert time.monotonic() - started < 2, "answered at once, not at its deadline"
            error = caught.value
            assert "tenant capped" in error.message and "requests per min (RPM)" in error.message
            assert 50_000 < int(error.response.headers["retry-after-ms"]) <= 61_000  # a window and its margin
            # The other tenant is not held back by it.
            for _ in range(5):
                free.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)  # type: ignore[arg-type]
            assert mock_totals(upstream)["requests"] == 8
            view = gw.status()["tenants"]["capped"]["sub_limits"]["rpm"]
            assert (view["limit"], view["used"]) == (3, 3)


@pytest.mark.usefixtures("redis_url")
def test_sub_limits_hold_exactly_across_gateways(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    with mock_running(tmp_path, {MODEL: 600}) as upstream:
        path = config(tmp_path, upstream, 600, ["{name: capped, key: sk-capped, rpm: 5}"])
        shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "QUEUE_TIMEOUT_S": "3"}
        with ExitStack() as stack:
            gws = [stack.enter_context(gateway_with(path, **shared)) for _ in range(2)]
            log = Log()
            for i in range(12):
                log.send(gws[i % 2], "sk-capped", "capped")
            log.join()
            assert sorted(log.statuses["capped"]) == [200] * 5 + [429] * 7
            assert mock_totals(upstream)["requests"] == 5


@pytest.mark.usefixtures("redis_url")
def test_across_gateways_high_requests_are_not_overtaken_by_the_other_gateways_queue(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    with mock_running(tmp_path, {MODEL: 120}) as upstream:  # 2 per second
        tenants = ["{name: heavy, key: sk-heavy}", "{name: light, key: sk-light}"]
        path = config(tmp_path, upstream, 120, tenants)
        shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
        with ExitStack() as stack:
            busy, other = (stack.enter_context(gateway_with(path, **shared)) for _ in range(2))
            log = Log()
            log.send(busy, "sk-heavy", "heavy", 24)  # twelve seconds of the budget on one gateway
            wait_for(lambda: busy.status()["queue"]["depth"] >= 18, what="the heavy queue")
            log.send(other, "sk-light", "high", 10, **{"x-apim-priority": "high"})
            log.join()
            first, last = log.answered.index("high"), len(log.answered) - 1 - log.answered[::-1].index("high")
            # Once the other gateway's high requests wait, the busy gateway's normal ones yield:
            # at most the sub-window in progress and a late ask go between them (without the
            # shared registry each gateway takes about half of every second: five or more).
            between = log.answered[first:last].count("heavy")
            assert between <= 3, log.answered
            assert mock_totals(upstream)["rate_limited"] == 0


@pytest.mark.usefixtures("redis_url")
def test_across_gateways_tenants_share_by_weight(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    with mock_running(tmp_path, {MODEL: 120}) as upstream:  # 2 per second
        tenants = ["{name: heavy, key: sk-heavy}", "{name: light, key: sk-light, weight: 3}"]
        path = config(tmp_path, upstream, 120, tenants)
        shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
        with ExitStack() as stack:
            a, b = (stack.enter_context(gateway_with(path, **shared)) for _ in range(2))
            log = Log()
            log.send(a, "sk-heavy", "heavy", 16)
            log.send(b, "sk-light", "light", 16)
            log.join()
            # While both wait, light (weight 3) gets three of every four: alone, each gateway
            # would take half.
            contended = log.answered[:16]
            assert contended.count("light") >= 10, log.answered
            assert mock_totals(upstream)["rate_limited"] == 0
