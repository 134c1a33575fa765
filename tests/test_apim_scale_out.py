"""Gateways and mocks on a real Redis Cluster and Sentinel set, as real processes.

Two gateways pointed at different Cluster nodes share one budget exactly; the master that
holds the budget is killed under load and the gateway carries on after the promotion with
no upstream 429 and no request lost; a Sentinel URL and a replica URL behave as they should.
"""

from __future__ import annotations

import threading
import time
import uuid

import httpx

from apim_server.gateway import budget_key
from tests.processes import Service, running_all
from tests.test_apim_e2e import (
    Background,
    chat,
    gateway_spec,
    mock_and_gateway,
    mock_spec,
    on_redis,
    wait_for,
)
from tests.topologies import Cluster, Sentinels, wait_until

BUDGET = 12


def ready(service: Service) -> int:
    return httpx.get(f"{service.url}/readyz", timeout=10).status_code


def budget_slot_key(prefix: str, upstream: Service) -> str:
    """A key in the slot of the gateway's budget for ``upstream``."""
    return f"{{{prefix}:{budget_key(upstream.v1)}}}:log"


def test_two_gateways_on_different_nodes_share_one_budget_exactly(redis_cluster: Cluster) -> None:
    gw_prefix, mock_prefix = f"scale-{uuid.uuid4().hex[:8]}", f"scale-mock-{uuid.uuid4().hex[:8]}"
    shared = {"RPM_LIMIT": str(BUDGET), "QUEUE_TIMEOUT_S": "3"}
    # The mock keeps its limits on the Cluster too, reached through yet another node.
    spec = mock_spec(RPM_LIMIT=str(BUDGET), **on_redis(redis_cluster.url(2), mock_prefix))
    with running_all(
        spec,
        gateway_spec(spec, **shared, **on_redis(redis_cluster.url(0), gw_prefix)),
        gateway_spec(spec, **shared, **on_redis(redis_cluster.url(4), gw_prefix)),
    ) as (upstream, gw_a, gw_b):
        assert ready(upstream) == ready(gw_a) == ready(gw_b) == 200
        # Twice the budget at once: exactly one budget's worth goes through; the rest cannot fit
        # before their short deadline and are told so at once (429), rather than at a 504.
        calls = [Background(lambda g=g: chat(g)) for g in (gw_a, gw_b) for _ in range(BUDGET)]
        statuses = [c.join(timeout=60).status_code for c in calls]
        assert sorted(statuses) == [200] * BUDGET + [429] * BUDGET
        totals = upstream.status()["totals"]
        assert totals["requests"] == BUDGET
        assert totals["rate_limited"] == 0
        for g in (gw_a, gw_b):
            status = g.status()
            assert status["limits"]["rpm"]["used"] == BUDGET
            assert status["totals"]["upstream_429"] == 0
        wait_for(lambda: gw_a.status()["cluster"]["instances"] == 2, what="both gateways in the cluster view")


def test_killing_the_budgets_master_under_load_loses_nothing(redis_cluster: Cluster) -> None:
    """A paced budget (10 per second) under steady load; the master that holds it is killed.
    Admission holds while the slot has no master, resumes after the replica's promotion, and
    every request is answered 200 without a single upstream 429. The gateway waits for a
    replica to have each admission (the README's advice for failovers)."""
    prefix = f"failover-{uuid.uuid4().hex[:8]}"
    limits = {"RPM_LIMIT": "600", "SHORT_WINDOW_S": "1"}
    waits = {"REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_MS": "200"}
    threads, per_thread = 6, 8
    with mock_and_gateway(limits, **limits, **waits, **on_redis(redis_cluster.url(1), prefix)) as (
        upstream,
        gw,
    ):
        owner = redis_cluster.owner(budget_slot_key(prefix, upstream))
        replica = redis_cluster.replica_of(owner)
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def load() -> None:
            for _ in range(per_thread):
                response = chat(gw)
                with lock:
                    results.append((response.status_code, time.monotonic()))

        workers = [threading.Thread(target=load, daemon=True) for _ in range(threads)]
        for w in workers:
            w.start()
        try:
            wait_for(lambda: len(results) >= 15, timeout=30, what="the load to be under way")
            killed_at = time.monotonic()
            owner.kill()
            for w in workers:
                w.join(120)
            assert not any(w.is_alive() for w in workers), "requests still unanswered"
            assert [status for status, _ in results] == [200] * (threads * per_thread)
            assert sum(1 for _, at in results if at > killed_at + 1) > 0, "no request after the kill"
            assert redis_cluster.owner(budget_slot_key(prefix, upstream)) is replica
            totals = upstream.status()["totals"]
            assert totals["rate_limited"] == 0, "the upstream answered 429"
            assert totals["requests"] == threads * per_thread
            status = gw.status()
            assert status["totals"]["upstream_429"] == 0
            assert status["store_unreachable_s"] is None
            assert ready(gw) == 200
        finally:
            for node in redis_cluster.nodes:
                if node.process is None:
                    node.start()
            wait_until(redis_cluster.healthy, "the cluster to be whole again", timeout=60)


def test_gateway_on_sentinel_follows_a_failover_and_is_not_ready_on_a_replica(
    redis_sentinels: Sentinels,
) -> None:
    prefix = f"sentinel-{uuid.uuid4().hex[:8]}"
    replica = redis_sentinels.other(redis_sentinels.current_master())
    spec = mock_spec()
    with running_all(
        spec,
        gateway_spec(spec, RPM_LIMIT="100", **on_redis(redis_sentinels.url(), prefix)),
        gateway_spec(spec, RPM_LIMIT="100", QUEUE_TIMEOUT_S="1.5", **on_redis(replica.url, prefix)),
    ) as (upstream, gw, on_replica):
        assert ready(gw) == 200
        assert [chat(gw).status_code for _ in range(3)] == [200] * 3
        assert gw.status()["limits"]["rpm"]["used"] == 3
        # Straight at a replica: the gateway says it is not ready and sends nothing upstream.
        body = httpx.get(f"{on_replica.url}/readyz", timeout=10).json()
        assert body["ready"] is False
        assert body["store"] is False
        assert chat(on_replica).status_code in (503, 504)
        assert upstream.status()["totals"]["requests"] == 3

        # The master dies: requests sent meanwhile wait, then go through the promoted replica.
        old = redis_sentinels.current_master()
        old.client().wait(1, 2000)
        try:
            old.kill()
            calls = [Background(lambda: chat(gw)) for _ in range(5)]
            assert [c.join(timeout=60).status_code for c in calls] == [200] * 5
            # The sentinel asked here may learn of the promotion after the one the gateway asked.
            wait_until(lambda: redis_sentinels.current_master() is not old, "the promotion", timeout=30)
            assert gw.status()["limits"]["rpm"]["used"] == 8
            assert upstream.status()["totals"]["requests"] == 8
            wait_for(lambda: ready(gw) == 200, timeout=10, what="the gateway to be ready again")
        finally:
            redis_sentinels.restart(old)
