"""One owner of the store's health: a Redis restarted empty holds admission once, for one window
from its restart, and says the truth meanwhile (it answers: no outage, no 503 store_unavailable).

Before, the dispatcher's recovery and the cluster publisher's restart detection both fired: the
hold was set again after Redis answered (67 s instead of 60.5), /status counted an outage while
Redis answered, and callers got 503 ``store_unavailable``.
"""

from __future__ import annotations

import shutil
import time
import uuid

import httpx
import pytest

from tests.test_apim_e2e import chat, mock_and_gateway, wait_for
from tests.test_reliability_redis_outage import PrivateRedis, ready


def test_a_redis_restarted_empty_holds_once_and_tells_the_truth() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("no redis-server binary")
    server = PrivateRedis(binary, persistent=False)
    server.start()
    try:
        limits = {"RPM_LIMIT": "100", "TPM_LIMIT": "100000"}
        on_redis = {"REDIS_URL": server.url, "REDIS_PREFIX": f"health-{uuid.uuid4().hex[:8]}"}
        with mock_and_gateway(limits, QUEUE_TIMEOUT_S="3", **on_redis, **limits) as (upstream, gw):
            assert chat(gw).status_code == 200
            server.stop()
            wait_for(lambda: gw.status()["store_unreachable_s"] is not None, what="the outage noticed")
            server.start()
            restarted = time.time()
            wait_for(lambda: gw.status()["store_unreachable_s"] is None, what="the store seen again")
            ends = []
            for _ in range(4):  # over 3 s, the hold's end never moves and no outage is reported
                status = gw.status()
                assert status["store_unreachable_s"] is None, "Redis answers: no outage"
                assert status["store_hold_s"] > 0
                assert status["store_hold_reason"] and "restarted empty" in status["store_hold_reason"]
                ends.append(status["paused_until"])
                time.sleep(1)
            assert max(ends) - min(ends) < 0.5, "held once, not again after the store answered"
            # One window (60.5 s) from the restart, not from a second detection.
            assert restarted + 55 < ends[0] < restarted + 61.5
            assert ready(gw).status_code == 200 or ready(gw).json()["store"] is True
            # A request whose timeout runs out during the hold is not told the store is unreachable.
            answer = httpx.post(
                f"{gw.v1}/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
            assert answer.json()["error"]["code"] != "store_unavailable"
            assert upstream.status()["totals"]["requests"] == 1
    finally:
        server.remove()
