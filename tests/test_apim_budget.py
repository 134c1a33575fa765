"""More requests than the budget, sent at once: all succeed, the upstream never answers 429.

One long test (~65 s: a sliding window is 60 s) runs two set-ups side by side: one gateway on
the embedded store in front of an RPM-bound mock, and three gateway processes sharing one
Redis budget in front of a TPM-bound mock. A short test does the same for Azure-style 1 s
sub-windows.
"""

from __future__ import annotations

import time

import httpx

from ratelimit.cost import CostEstimator
from tests.processes import Service, running_all
from tests.test_apim_e2e import (
    MESSAGES,
    MODEL,
    Background,
    chat,
    gateway_spec,
    mock_and_gateway,
    mock_spec,
    on_redis,
    wait_for,
)

BUDGET = 20  # requests per window in both set-ups
EXTRA = 10  # requests beyond it: they must wait for the window to free
MAX_TOKENS = 60


def send(gw: Service) -> tuple[int, float]:
    started = time.monotonic()
    response = httpx.post(
        f"{gw.v1}/chat/completions",
        json={"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS},
        timeout=120,
    )
    return response.status_code, time.monotonic() - started


def test_over_budget_burst_all_succeed_without_upstream_429(redis_url: str, redis_prefix: str) -> None:
    cost = CostEstimator().estimate({"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}).tokens
    tpm = str(BUDGET * cost)
    # A: one gateway, embedded store, RPM binds. B: three gateways on one Redis budget, TPM binds.
    spec_a, spec_b = mock_spec(RPM_LIMIT=str(BUDGET)), mock_spec(TPM_LIMIT=tpm)
    shared = on_redis(redis_url, redis_prefix)
    with running_all(
        spec_a,
        gateway_spec(spec_a, RPM_LIMIT=str(BUDGET)),
        spec_b,
        *(gateway_spec(spec_b, TPM_LIMIT=tpm, **shared) for _ in range(3)),
    ) as (mock_a, gw_a, mock_b, *gws_b):
        started = time.monotonic()
        calls_a = [Background(lambda: send(gw_a)) for _ in range(BUDGET + EXTRA)]
        calls_b = [Background(lambda g=g: send(g)) for g in gws_b for _ in range((BUDGET + EXTRA) // 3)]

        def cluster_shows_the_waiting() -> bool:
            cluster = gws_b[0].status()["cluster"]
            return cluster["instances"] == 3 and cluster["depth"] == EXTRA

        # While the extra requests wait, any instance reports the whole cluster's queue.
        wait_for(cluster_shows_the_waiting, timeout=30, what="the cluster view to show the waiting requests")
        wait_for(lambda: gw_a.status()["queue"]["depth"] == EXTRA, timeout=30, what="A's queue")
        assert mock_a.status()["limits"]["rpm"]["used"] == BUDGET
        assert mock_b.status()["limits"]["tpm"]["used"] == BUDGET * cost

        for name, calls, upstream in (("A", calls_a, mock_a), ("B", calls_b, mock_b)):
            results = [c.join(timeout=150) for c in calls]
            assert [status for status, _ in results] == [200] * (BUDGET + EXTRA), name
            # Exactly the first window's worth went through at once; the rest waited for it to free.
            early = sum(1 for c in calls if c.done_at is not None and c.done_at - started < 55)
            assert early == BUDGET, name
            late = [c for c in calls if c.done_at is not None and c.done_at - started >= 60]
            assert len(late) == EXTRA, name
            totals = upstream.status()["totals"]
            assert totals["rate_limited"] == 0, f"{name}: the upstream answered 429"
            assert totals["requests"] == BUDGET + EXTRA

        for g in (gw_a, *gws_b):
            status = g.status()
            assert status["totals"]["upstream_429"] == 0
            assert status["totals"]["rate_limited"] == 0
        assert sum(g.status()["totals"]["requests"] for g in gws_b) == BUDGET + EXTRA


def test_sub_window_pacing_avoids_upstream_429() -> None:
    # Azure-style: RPM 600 enforced as 10 per second. Without pacing a burst of 40 gets 429s.
    limits = {"RPM_LIMIT": "600", "SHORT_WINDOW_S": "1"}
    with mock_and_gateway(limits, **limits) as (azure, gw):
        calls = [Background(lambda: chat(gw)) for _ in range(40)]
        assert [c.join().status_code for c in calls] == [200] * 40
        assert azure.status()["totals"]["rate_limited"] == 0
        assert gw.status()["totals"]["upstream_429"] == 0
