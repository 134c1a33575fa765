"""Private Redis topologies for tests: a 3-master 3-replica Cluster and a Sentinel set.

Every node is a ``redis-server`` of the test session's own, on a free loopback port, in a
temporary directory, so tests may kill and restart nodes without touching the shared Redis.
Timeouts are small (a dead master is replaced in a few seconds) to keep failover tests short.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.processes import free_port

NODE_TIMEOUT_MS = 1000
"""cluster-node-timeout and Sentinel's down-after-milliseconds."""
SENTINEL_SERVICE = "apim-test"


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Node:
    """One redis-server process that can be killed and started again with the same port and files."""

    def __init__(self, binary: str, workdir: Path, args: list[str], port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.dir = workdir / str(self.port)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def start(self, *extra: str) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                *self.args,
                *extra,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: bool(self.client().ping()), f"redis-server on port {self.port}")

    def kill(self) -> None:
        """Gone at once, as a crashed host is (no shutdown handshake with its peers)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def info(self, section: str) -> dict:
        return self.client().info(section)


COMMON = [
    "--save",
    "",
    "--appendonly",
    "no",
    "--repl-diskless-sync",
    "yes",
    "--repl-diskless-sync-delay",
    "0",
]


class Cluster:
    """Three masters owning a third of the slots each, one replica each."""

    def __init__(self, binary: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="apim-test-cluster-"))
        args = [
            *COMMON,
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(NODE_TIMEOUT_MS),
            # A replica may take over however long it was cut off: tests kill masters at will.
            "--cluster-replica-validity-factor",
            "0",
        ]
        # The bus port would be port + 10000 (maybe taken, or past 65535): name one.
        self.bus_ports = [free_port() for _ in range(6)]
        self.nodes = [
            Node(binary, self.workdir, [*args, "--cluster-port", str(bus)]) for bus in self.bus_ports
        ]

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        masters, replicas = self.nodes[:3], self.nodes[3:]
        bounds = [0, 5461, 10923, 16384]
        for i, node in enumerate(masters):
            node.client().execute_command("CLUSTER ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        first = masters[0].client()
        for node, bus in zip(self.nodes[1:], self.bus_ports[1:], strict=True):
            first.execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus)
        wait_until(self._all_known, "the cluster nodes to meet")
        for master, replica in zip(masters, replicas, strict=True):
            master_id = master.client().execute_command("CLUSTER MYID")
            master_id = master_id.decode() if isinstance(master_id, bytes) else master_id
            wait_until(
                lambda r=replica, m=master_id: bool(r.client().execute_command("CLUSTER REPLICATE", m)),
                "a replica to attach",
            )
        wait_until(self.healthy, "the cluster to be healthy", timeout=60)

    def _all_known(self) -> bool:
        return all(len(n.client().execute_command("CLUSTER NODES")) == 6 for n in self.nodes)

    def running(self) -> list[Node]:
        return [n for n in self.nodes if n.process is not None]

    def healthy(self) -> bool:
        """Every running node sees the cluster ok, three masters each with a replica in sync."""
        for node in self.running():
            if node.client().cluster("info").get("cluster_state") != "ok":
                return False
        masters = [n for n in self.running() if n.info("replication")["role"] == "master"]
        if len(masters) != 3:
            return False
        return all(int(m.info("replication").get("connected_slaves", 0)) >= 1 for m in masters) and all(
            n.info("replication").get("master_link_status") == "up"
            for n in self.running()
            if n.info("replication")["role"] == "slave"
        )

    def masters(self) -> list[Node]:
        return [n for n in self.running() if n.info("replication")["role"] == "master"]

    def owner(self, key: str) -> Node:
        """The master node that holds ``key``'s slot now."""
        return self.owner_of_slot(int(self.running()[0].client().cluster("keyslot", key)))

    def owner_of_slot(self, slot: int) -> Node:
        """The master that every running master says holds ``slot`` (RuntimeError if they
        disagree: a change still spreading)."""
        ports = self.slot_owners(slot)
        if len(ports) != 1:
            raise RuntimeError(f"the masters disagree on the owner of slot {slot}: {sorted(ports)}")
        port = ports.pop()
        return next(n for n in self.running() if n.port == port)

    def slot_owners(self, slot: int) -> set[int]:
        """The ports of the master each running master says holds ``slot``."""
        return {
            _master_port(m.client().execute_command("CLUSTER SLOTS", NEVER_DECODE=True), slot)
            for m in self.masters()
        }

    def replica_of(self, master: Node) -> Node:
        for node in self.running():
            info = node.info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master.port:
                return node
        raise RuntimeError(f"no replica of port {master.port}")

    def url(self, index: int = 0) -> str:
        return self.nodes[index].url

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _master_port(slots: list, slot: int) -> int:
    """The port of the master covering ``slot``, from a raw CLUSTER SLOTS reply."""
    for lo, hi, master, *_ in slots:
        if int(lo) <= slot <= int(hi):
            return int(master[1])
    raise RuntimeError(f"no master covers slot {slot}")


class Sentinels:
    """One master, one replica, three sentinels watching them as ``SENTINEL_SERVICE``."""

    def __init__(self, binary: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="apim-test-sentinel-"))
        self.master = Node(binary, self.workdir, COMMON)
        self.replica = Node(binary, self.workdir, COMMON)
        self.sentinels = [Node(binary, self.workdir, []) for _ in range(3)]

    def start(self) -> None:
        self.master.start()
        self.replica.start("--replicaof", "127.0.0.1", str(self.master.port))
        for sentinel in self.sentinels:
            conf = sentinel.dir / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {NODE_TIMEOUT_MS}\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
            )
            sentinel.args = [str(conf), "--sentinel"]
            sentinel.start()
        wait_until(self.healthy, "the sentinels to see the master and its replica", timeout=60)

    def sentinel_addresses(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def url(self) -> str:
        return f"redis+sentinel://{self.sentinel_addresses()}/{SENTINEL_SERVICE}"

    def current_master(self) -> Node:
        _host, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
        return self.master if int(port) == self.master.port else self.replica

    def restart(self, node: Node) -> None:
        """Start a killed node again as a replica of the current master (what Sentinel would
        tell it, after up to 10 s), and wait until the set is whole."""
        node.start("--replicaof", "127.0.0.1", str(self.current_master().port))
        wait_until(self.healthy, "the Sentinel set to be whole again", timeout=60)

    def other(self, node: Node) -> Node:
        return self.replica if node is self.master else self.master

    def healthy(self) -> bool:
        master = self.current_master()
        for sentinel in self.sentinels:
            info = sentinel.client().sentinel_master(SENTINEL_SERVICE)
            if int(info["num-other-sentinels"]) < 2 or int(info["num-slaves"]) < 1:
                return False
            if int(info["port"]) != master.port or "s_down" in str(info.get("flags", "")):
                return False
        other = self.other(master)
        return (
            other.process is not None
            and other.info("replication").get("master_link_status") == "up"
            and int(other.info("replication")["master_port"]) == master.port
        )

    def close(self) -> None:
        for node in [*self.sentinels, self.master, self.replica]:
            node.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
