"""The Redis store on a real Redis Cluster and a real Sentinel set: routing, readiness, the
server that holds a budget, the cluster view of several gateways, and failovers followed.

The topologies are private to the test session (tests/topologies.py); tests that kill a
master start it again and wait until the topology is whole before they end.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ReadOnlyError

from apim_server.cluster import Cluster as ClusterView
from ratelimit import Cost, Limits, RedisStore
from tests.topologies import COMMON, Cluster, Node, Sentinels, wait_until

POLICY = Limits(rpm=1000, tpm=0, rpd=0, tpd=0).policy()


def prefix() -> str:
    return f"topo-{uuid.uuid4().hex[:10]}"


async def admit_until_it_works(store: RedisStore, key: str) -> float:
    """Seconds until an admission succeeds again (failures meanwhile are expected)."""
    started = time.monotonic()
    async with asyncio.timeout(30):
        while True:
            try:
                if (await store.acquire(key, POLICY, Cost(1, 0))).allowed:
                    return time.monotonic() - started
            except Exception:  # noqa: BLE001 - the failover is under way
                pass
            await asyncio.sleep(0.1)


# --- Redis Cluster -------------------------------------------------------------------------------


async def test_budgets_on_every_master_through_one_node(redis_cluster: Cluster) -> None:
    """One URL (a replica's, even): budgets whose slots sit on each of the three masters all
    work, and each budget's keys live on its own slot's master."""
    store = RedisStore.from_url(redis_cluster.url(5), prefix=prefix())
    try:
        assert isinstance(await store.client(), RedisCluster)
        assert store.connection.topology == "cluster"
        owners: set[int] = set()
        for i in range(30):
            key = f"budget-{i}"
            decision = await store.acquire(key, POLICY, Cost(1, 0))
            assert decision.allowed
            assert (await store.peek(key, POLICY)).state("requests/minute").used == 1
            owner = redis_cluster.owner(store.keys(key)[0])
            assert all(redis_cluster.owner(k) is owner for k in store.keys(key))
            owners.add(owner.port)
        assert len(owners) == 3
    finally:
        await store.close()


async def test_server_is_the_master_that_holds_the_budget(redis_cluster: Cluster) -> None:
    store = RedisStore.from_url(redis_cluster.url(0), prefix=prefix())
    try:
        for key in ("a", "b", "c", "d"):
            owner = redis_cluster.owner(store.keys(key)[0])
            assert (await store.server(key)).run_id == owner.info("server")["run_id"]
        assert await store.ready("a")
    finally:
        await store.close()


async def test_the_cluster_view_of_gateways_on_different_nodes(redis_cluster: Cluster) -> None:
    """Two instances publishing through different nodes see each other in one view."""
    name = prefix()
    stores = [RedisStore.from_url(redis_cluster.url(i), prefix=name) for i in (1, 4)]
    views = [
        ClusterView(s, name, f"instance-{i}", lambda i=i: {"depth": i + 1, "in_flight": 2}, budget_key="k")
        for i, s in enumerate(stores)
    ]
    try:
        for view in views:
            await view.publish()
            await view.check_server()
        for view in views:
            seen = await view.view()
            assert seen["instances"] == 2
            assert seen["depth"] == 3
            assert seen["in_flight"] == 4
    finally:
        for view in views:
            await view.stop()
        for s in stores:
            await s.close()


async def test_killing_the_budgets_master_is_followed(redis_cluster: Cluster) -> None:
    """The master holding a budget dies: its replica takes over, the store finds it on its own,
    the record of the budget survives, and the server holding it has a new run id."""
    store = RedisStore.from_url(redis_cluster.url(0), prefix=prefix())
    key = "failover"
    try:
        for _ in range(5):
            assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
        before = await store.server(key)
        owner = redis_cluster.owner(store.keys(key)[0])
        # Wait until the replica has the 5 admissions (replication is asynchronous).
        replica = redis_cluster.replica_of(owner)
        owner.client().wait(1, 2000)
        owner.kill()
        await admit_until_it_works(store, key)
        assert (await store.peek(key, POLICY)).state("requests/minute").used == 6
        after = await store.server(key)
        assert after.run_id != before.run_id
        assert after.run_id == replica.info("server")["run_id"]
        assert await store.ready(key)
    finally:
        await store.close()
        for node in redis_cluster.nodes:
            if node.process is None:
                node.start()  # back as a replica of the new master
        wait_until(redis_cluster.healthy, "the cluster to be whole again", timeout=60)


# --- Sentinel ------------------------------------------------------------------------------------


async def test_sentinel_url_reaches_the_master(redis_sentinels: Sentinels) -> None:
    store = RedisStore.from_url(redis_sentinels.url(), prefix=prefix())
    try:
        assert store.connection.topology == "sentinel"
        assert (await store.acquire("k", POLICY, Cost(1, 0))).allowed
        assert await store.ready("k")
        master = redis_sentinels.current_master()
        assert (await store.server("k")).run_id == master.info("server")["run_id"]
    finally:
        await store.close()


async def test_a_replica_url_is_not_ready_and_admits_nothing(redis_sentinels: Sentinels) -> None:
    """Pointed straight at a replica: never ready, and an admission fails (closed) rather
    than counting on a copy that the master overwrites."""
    replica = redis_sentinels.other(redis_sentinels.current_master())
    store = RedisStore.from_url(replica.url, prefix=prefix())
    try:
        assert await store.ping()  # it answers...
        assert not await store.ready("k")  # ...but could not admit
        with pytest.raises(ReadOnlyError):
            await store.acquire("k", POLICY, Cost(1, 0))
    finally:
        await store.close()


async def test_sentinel_failover_is_followed(redis_sentinels: Sentinels) -> None:
    store = RedisStore.from_url(redis_sentinels.url(), prefix=prefix())
    key = "failover"
    try:
        for _ in range(3):
            assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
        old = redis_sentinels.current_master()
        old.client().wait(1, 2000)
        old.kill()
        await admit_until_it_works(store, key)
        assert redis_sentinels.current_master() is not old
        assert (await store.peek(key, POLICY)).state("requests/minute").used == 4
        assert await store.ready(key)
        # The old master comes back as a replica: the store keeps using the new one.
        old.start()
        wait_until(redis_sentinels.healthy, "the old master to rejoin as a replica", timeout=60)
        assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
        assert await store.ready(key)
    finally:
        await store.close()
        for node in (redis_sentinels.master, redis_sentinels.replica):
            if node.process is None:
                node.start()
        wait_until(redis_sentinels.healthy, "the Sentinel set to be whole again", timeout=60)


# --- one server, a user confined to the service's keys ---------------------------------------------


ACL = "ACL SETUSER app on >s3cret:pw ~{apim:* +@read +@write +@scripting +info +ping +time -script|flush"


async def test_an_acl_user_confined_to_the_prefix_is_enough(redis_server_binary: str) -> None:
    """The ACL of the README: admissions, readiness and restart detection all work with it.
    (A private server: the shared one's users are not ours to change.)"""
    node = Node(redis_server_binary, Path(tempfile.mkdtemp(prefix="apim-test-acl-")), COMMON)
    node.start()
    try:
        node.client().execute_command(*ACL.split(" "))
        store = RedisStore.from_url(f"redis://app:s3cret%3Apw@127.0.0.1:{node.port}/0", prefix="apim")
        try:
            assert (await store.acquire("k", POLICY, Cost(1, 5))).allowed
            assert await store.ready("k")
            assert (await store.server("k")).run_id == node.info("server")["run_id"]
        finally:
            await store.close()
        outsider = RedisStore.from_url(f"redis://app:s3cret%3Apw@127.0.0.1:{node.port}/0", prefix="other")
        try:
            assert not await outsider.ready("k")  # keys outside the user's pattern
        finally:
            await outsider.close()
    finally:
        node.stop()
        shutil.rmtree(node.dir.parent, ignore_errors=True)
