"""Many budgets end to end (SPEC §8): per-model budgets, pools of deployments with failover, and
gateways sharing budgets through Redis. Real mock and gateway processes, the official SDK.

Short windows keep these quick: an RPM paced over 1 s sub-windows (as Azure enforces it) admits
a steady trickle, so "more than the budget" is a few seconds of queueing, not a minute.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from tests.processes import Service, Spec, free_port, running_all
from tests.test_apim_e2e import MESSAGES, gateway_env, mock_spec, v1, wait_for

SMALL, LARGE = "gpt-4o", "gpt-4o-mini"


def mock_with(tmp_path: Path, models: dict[str, int], short: int = 1, **settings: str) -> Spec:
    """A mock whose listed models have these RPMs (paced over ``short`` s sub-windows, 0 = none),
    to start with ``running_all`` (its URL is ``v1(spec)`` before it starts)."""
    path = tmp_path / f"mock-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text("models:\n" + "".join(f"  {m}: {{rpm: {rpm}}}\n" for m, rpm in models.items()))
    return mock_spec(CONFIG=str(path), SHORT_WINDOW_S=str(short), **settings)


def config(tmp_path: Path, deployments: list[tuple[str, str, dict[str, int]]], short: int = 1) -> Path:
    """A gateway file: (name, url, {model: rpm}) per deployment."""
    lines = ["deployments:"]
    for name, url, models in deployments:
        lines += [f"  - name: {name}", f"    url: {url}", f"    short_window_s: {short}", "    models:"]
        lines += [f"      {m}: {{rpm: {rpm}}}" for m, rpm in models.items()]
    path = tmp_path / f"apim-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def gateway_with(path: Path, **settings: str) -> Spec:
    """A gateway whose deployments are in the file at ``path``, to start with ``running_all``."""
    return Spec("apim_server", gateway_env("http://127.0.0.1:9/v1", CONFIG=str(path), **settings))


class Calls:
    """Chat calls on threads, each noting when it was answered, in which order."""

    def __init__(self, service: Service) -> None:
        self.client = openai.OpenAI(base_url=service.v1, api_key="sk-caller", max_retries=0, timeout=60)
        self.lock = threading.Lock()
        self.order: list[str] = []
        self.errors: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def start(self, model: str, n: int) -> None:
        for _ in range(n):
            thread = threading.Thread(target=self._one, args=(model,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _one(self, model: str) -> None:
        try:
            self.client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            with self.lock:
                self.errors.append(exc)
            return
        with self.lock:
            self.order.append(model)

    def join(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self.threads), "calls still waiting"


def mock_totals(service: Service, model: str | None = None) -> dict[str, int]:
    suffix = f"?model={model}" if model else ""
    return httpx.get(f"{service.url}/status{suffix}", timeout=5).json()["totals"]


def test_a_full_small_budget_never_delays_a_large_one(tmp_path: Path) -> None:
    # The small model admits 1 request per 1 s sub-window, the large one 10.
    spec = mock_with(tmp_path, {SMALL: 60, LARGE: 600})
    path = config(tmp_path, [("mock", v1(spec), {SMALL: 60, LARGE: 600})])
    with running_all(spec, gateway_with(path)) as (upstream, gw):
        calls = Calls(gw)
        calls.start(SMALL, 8)  # ~8 sub-windows of queueing for the small model
        wait_for(lambda: gw.status()["pools"][SMALL]["depth"] >= 5, what="the small model to queue")
        calls.start(LARGE, 30)  # more than one sub-window of the large model's budget too
        calls.join()
        assert calls.errors == []
        assert len(calls.order) == 38
        last_large = max(i for i, m in enumerate(calls.order) if m == LARGE)
        last_small = max(i for i, m in enumerate(calls.order) if m == SMALL)
        assert last_large < last_small, "the large model's requests never waited behind the small one's"
        totals = mock_totals(upstream)
        assert totals["rate_limited"] == 0
        assert totals["requests"] == 38
        status = gw.status()
        budgets = {b["model"]: b for b in status["budgets"]}
        assert budgets[SMALL]["limits"]["rpm"]["limit"] == 60
        assert budgets[LARGE]["limits"]["rpm"]["limit"] == 600
        assert budgets[SMALL]["key"] != budgets[LARGE]["key"]


def test_an_unknown_model_is_a_404_at_once_and_costs_nothing(tmp_path: Path) -> None:
    spec = mock_with(tmp_path, {SMALL: 60})
    path = config(tmp_path, [("mock", v1(spec), {SMALL: 60})])
    with running_all(spec, gateway_with(path)) as (upstream, gw):
        client = openai.OpenAI(base_url=gw.v1, api_key="sk-caller", max_retries=0)
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="gpt-9", messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
        assert caught.value.code == "model_not_found"
        assert mock_totals(upstream)["requests"] == 0
        assert gw.status()["budgets"][0]["limits"]["rpm"]["used"] == 0
        ids = [m.id for m in client.models.list()]
        assert ids == [SMALL]


def test_one_model_on_two_deployments_uses_both(tmp_path: Path) -> None:
    spec_a, spec_b = mock_with(tmp_path, {SMALL: 60}), mock_with(tmp_path, {SMALL: 60})
    path = config(tmp_path, [("a", v1(spec_a), {SMALL: 60}), ("b", v1(spec_b), {SMALL: 60})])
    with running_all(spec_a, spec_b, gateway_with(path)) as (a, b, gw):
        calls = Calls(gw)
        calls.start(SMALL, 8)  # twice what one deployment admits in the first sub-windows
        calls.join()
        assert calls.errors == []
        ta, tb = mock_totals(a), mock_totals(b)
        assert ta["rate_limited"] == tb["rate_limited"] == 0
        assert ta["requests"] >= 2 and tb["requests"] >= 2, "both deployments served"
        assert ta["requests"] + tb["requests"] == 8
        assert gw.status()["pools"][SMALL]["members"] == ["a", "b"]


def test_a_dead_deployment_from_the_start_fails_over_unseen(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    spec = mock_with(tmp_path, {SMALL: 600})
    path = config(tmp_path, [("dead", dead, {SMALL: 600}), ("b", v1(spec), {SMALL: 600})])
    with running_all(spec, gateway_with(path)) as (b, gw):
        calls = Calls(gw)
        calls.start(SMALL, 12)
        calls.join()
        assert calls.errors == []
        assert mock_totals(b)["requests"] == 12
        state = gw.status()["deployments"]["dead"]
        assert state["state"] in ("out", "cooling")
        assert state["reason"] and "Connect" in state["reason"]
        assert gw.status()["deployments"]["b"]["state"] == "in"


def test_a_deployment_killed_mid_run_fails_over_unseen(tmp_path: Path) -> None:
    spec_a = mock_with(tmp_path, {SMALL: 600}, TTFT_MS="400")
    spec_b = mock_with(tmp_path, {SMALL: 600}, TTFT_MS="400")
    path = config(tmp_path, [("a", v1(spec_a), {SMALL: 600}), ("b", v1(spec_b), {SMALL: 600})])
    with running_all(spec_a, spec_b, gateway_with(path)) as (a, b, gw):
        calls = Calls(gw)
        calls.start(SMALL, 30)
        wait_for(lambda: gw.status()["deployments"]["a"]["in_flight"] > 0, what="requests out on a")
        a.stop(signal.SIGKILL)
        calls.join()
        assert calls.errors == []
        assert len(calls.order) == 30
        assert mock_totals(b)["rate_limited"] == 0


@pytest.mark.usefixtures("redis_url")
def test_three_gateways_with_one_file_share_every_budget_exactly(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # No sub-window: 6 per minute, so whatever is over cannot fit before its deadline: a 429
    # at once (the budget's record says when it would fit), never a wait for the 504.
    spec = mock_with(tmp_path, {SMALL: 6}, short=0)
    path = config(tmp_path, [("mock", v1(spec), {SMALL: 6})], short=0)
    shared = {"REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix, "QUEUE_TIMEOUT_S": "4"}
    with running_all(spec, *(gateway_with(path, **shared) for _ in range(3))) as (upstream, *gws):
        results: list[int] = []
        lock = threading.Lock()

        def one(gw: Service) -> None:
            body = {"model": SMALL, "messages": MESSAGES, "max_tokens": 8}
            status = httpx.post(f"{gw.v1}/chat/completions", json=body, timeout=30).status_code
            with lock:
                results.append(status)

        threads = [threading.Thread(target=one, args=(gws[i % 3],)) for i in range(9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [200] * 6 + [429] * 3
        assert mock_totals(upstream) == {
            "requests": 6,
            "ok": 6,
            "rate_limited": 0,
            "capacity_rejected": 0,
            "errors": 0,
        }
        keys = {gw.status()["budgets"][0]["key"] for gw in gws}
        assert len(keys) == 1
        assert gws[0].status()["limits"]["rpm"]["used"] == 6


def test_a_tenant_above_its_max_priority_is_queued_lower_and_told_so(tmp_path: Path) -> None:
    spec = mock_with(tmp_path, {SMALL: 600})
    path = config(tmp_path, [("mock", v1(spec), {SMALL: 600})])
    tenants = [
        "  - {name: capped, key: sk-capped, max_priority: normal}",
        "  - {name: free, key: sk-free}",
    ]
    path.write_text(path.read_text() + "tenants:\n" + "\n".join(tenants) + "\n")
    with running_all(spec, gateway_with(path)) as (_upstream, gw):
        body = {"model": SMALL, "messages": MESSAGES, "max_tokens": 4}

        def asked_high(key: str) -> httpx.Response:
            headers = {"authorization": f"Bearer {key}", "x-apim-priority": "high"}
            return httpx.post(f"{gw.v1}/chat/completions", json=body, headers=headers, timeout=30)

        capped, free = asked_high("sk-capped"), asked_high("sk-free")
        assert capped.status_code == free.status_code == 200
        assert capped.headers["x-apim-priority"] == "normal"
        assert free.headers["x-apim-priority"] == "high"
