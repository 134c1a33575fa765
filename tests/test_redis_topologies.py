"""The Redis store on a real Redis Cluster and a real Sentinel set: routing, readiness, the
server that holds a budget, the cluster view of several gateways, resharding and a master
failover followed (a Sentinel failover: tests/test_apim_scale_out.py), WAIT, ACL users, TLS.

The topologies are private to the test session (tests/topologies.py); tests that kill a
master start it again and wait until the topology is whole before they end.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ReadOnlyError

from apim_server.cluster import Cluster as ClusterView
from ratelimit import Cost, Limits, RedisStore
from tests.processes import free_port
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
        ClusterView(s, name, f"instance-{i}", lambda i=i: {"depth": i + 1, "in_flight": 2})
        for i, s in enumerate(stores)
    ]
    try:
        for view in views:
            await view.publish()
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


async def test_a_budget_whose_slot_moves_to_another_master_is_followed(redis_cluster: Cluster) -> None:
    """Resharding: the budget's slot and keys move to another master while the store holds a
    stale slot map. Its batched calls are turned away (MOVED), go again through the cluster
    client, and the record moved with the keys."""
    store = RedisStore.from_url(redis_cluster.url(0), prefix=prefix())
    key = "moving"
    try:
        for _ in range(3):
            assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
        source = redis_cluster.owner(store.keys(key)[0])
        target = next(n for n in redis_cluster.masters() if n is not source)
        slot = int(source.client().cluster("keyslot", store.keys(key)[0]))
        move_slot(redis_cluster, slot, source, target)
        assert redis_cluster.owner(store.keys(key)[0]) is target
        # A call on another budget goes first, alone: the six behind it form one batch, sent
        # with the stale map to the old master.
        batch = await asyncio.gather(
            store.acquire("elsewhere", POLICY, Cost(1, 0)),
            *(store.acquire(key, POLICY, Cost(1, 0)) for _ in range(6)),
        )
        assert all(d.allowed for d in batch)
        assert (await store.peek(key, POLICY)).state("requests/minute").used == 9
        assert (await store.server(key)).run_id == target.info("server")["run_id"]
        move_slot(redis_cluster, slot, target, source)  # as it was, for the other tests
    finally:
        await store.close()


def move_slot(cluster: Cluster, slot: int, source: Node, target: Node) -> None:
    """What redis-cli --cluster reshard does for one slot."""
    source_id, target_id = (n.client().execute_command("CLUSTER MYID") for n in (source, target))
    target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    keys = source.client().execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)
    if keys:
        source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    for node in cluster.masters():
        node.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    wait_until(
        lambda: cluster.slot_owners(slot) == {target.port}, "every master to agree on the slot's owner"
    )


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


# --- WAIT: an admission is on a replica before it is granted ---------------------------------------


@contextmanager
def stopped(node: Node) -> Iterator[None]:
    """The node frozen (SIGSTOP): connected, but acknowledging nothing."""
    assert node.process is not None
    node.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        node.process.send_signal(signal.SIGCONT)


async def check_replicated_writes(store: RedisStore, key: str, replica: Node) -> None:
    assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
    assert store.unreplicated == 0
    with stopped(replica):
        # Granted all the same once the wait runs out, and counted as not confirmed: one alone,
        # then five at once (one alone, then a pipeline of four).
        assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
        assert store.unreplicated == 1
        batch = await asyncio.gather(*(store.acquire(key, POLICY, Cost(1, 0)) for _ in range(5)))
        assert all(d.allowed for d in batch)
        assert store.unreplicated == 6

    async def confirmed_again() -> None:
        while True:
            before = store.unreplicated
            assert (await store.acquire(key, POLICY, Cost(1, 0))).allowed
            if store.unreplicated == before:
                return
            await asyncio.sleep(0.05)

    # Past a wait that ran out, calls skip waiting for a while; then they are confirmed again.
    await asyncio.wait_for(confirmed_again(), 10)


async def test_wait_for_a_replica_through_sentinel(redis_sentinels: Sentinels) -> None:
    replica = redis_sentinels.other(redis_sentinels.current_master())
    store = RedisStore.from_url(redis_sentinels.url(), prefix=prefix(), replicas=1, replica_wait_ms=300)
    try:
        await check_replicated_writes(store, "k", replica)
    finally:
        await store.close()
    wait_until(redis_sentinels.healthy, "the Sentinel set to be whole again", timeout=60)


async def test_wait_for_a_replica_on_a_cluster(redis_cluster: Cluster) -> None:
    store = RedisStore.from_url(redis_cluster.url(3), prefix=prefix(), replicas=1, replica_wait_ms=300)
    try:
        await store.client()
        replica = redis_cluster.replica_of(redis_cluster.owner(store.keys("k")[0]))
        await check_replicated_writes(store, "k", replica)
    finally:
        await store.close()
    wait_until(redis_cluster.healthy, "the cluster to be whole again", timeout=60)


async def test_without_wait_nothing_is_confirmed_or_counted(redis_sentinels: Sentinels) -> None:
    """The default: no WAIT, so a frozen replica changes nothing for the store."""
    replica = redis_sentinels.other(redis_sentinels.current_master())
    store = RedisStore.from_url(redis_sentinels.url(), prefix=prefix())
    try:
        with stopped(replica):
            batch = await asyncio.gather(*(store.acquire("k", POLICY, Cost(1, 0)) for _ in range(5)))
            assert all(d.allowed for d in batch)
        assert store.unreplicated == 0
    finally:
        await store.close()


# --- TLS -------------------------------------------------------------------------------------------


def make_certificates(directory: Path) -> None:
    """A throw-away CA (ca.pem) and a certificate for 127.0.0.1 signed by it (server.pem)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    subj = ("-nodes", "-days", "2", "-subj")
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", *subj, "/CN=test-ca", "-keyout", "ca.key", "-out", "ca.pem"
    )
    openssl(
        "req", "-newkey", "rsa:2048", *subj, "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.pem",
    )  # fmt: skip


async def test_rediss_with_a_ca_file(redis_server_binary: str, tmp_path: Path) -> None:
    """``rediss://`` with ``ssl_ca_certs``: admits and is ready; without the CA it is not."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate with")
    make_certificates(tmp_path)
    tls_port = free_port()
    tls = ["--tls-port", str(tls_port), "--tls-auth-clients", "no"]
    for option, name in (("--tls-cert-file", "server.pem"), ("--tls-key-file", "server.key")):
        tls += [option, str(tmp_path / name)]
    node = Node(redis_server_binary, tmp_path, [*COMMON, *tls])  # Node.start waits on the plain port
    try:
        node.start()
    except RuntimeError:
        pytest.skip("this redis-server has no TLS support")
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0"
        trusted = RedisStore.from_url(f"{url}?ssl_ca_certs={tmp_path / 'ca.pem'}", prefix=prefix())
        untrusted = RedisStore.from_url(url, prefix=prefix())
        try:
            assert (await trusted.acquire("k", POLICY, Cost(1, 0))).allowed
            assert await trusted.ready("k")
            assert not await untrusted.ready("k")  # the system's CAs do not know ours
        finally:
            await trusted.close()
            await untrusted.close()
    finally:
        node.stop()
