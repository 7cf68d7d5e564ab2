"""Real replicated and clustered Redis for tests: a primary + replica + three sentinels,
and a three-primary Redis Cluster, each a set of ``redis-server`` processes on free
loopback ports (never 6379) that the test owns, kills and restarts.

- ``SentinelGroup``: ``redis-server`` primary and replica (AOF, ``appendfsync
  always``), and three ``redis-server --sentinel`` watching master ``gr``, quorum 2,
  ``down-after-milliseconds`` short so a killed primary is failed over in seconds.
- ``ClusterGroup``: three ``redis-server --cluster-enabled yes`` (AOF) joined by
  ``redis-cli --cluster create`` with no replicas: every slot has one owner.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import redis

from guardrails.infra import server
from tests.redis_harness import FORBIDDEN_PORT, RedisServer, free_port

MASTER = "gr"


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free as well."""
    while True:
        port = free_port()
        if port + 10000 >= 65536 or FORBIDDEN_PORT in (port, port + 10000):
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_cli(server_binary: str) -> str:
    """``redis-cli`` next to the server binary, else on PATH."""
    beside = Path(server_binary).with_name("redis-cli")
    if beside.exists():
        return str(beside)
    found = shutil.which("redis-cli")
    if not found:
        raise RuntimeError("redis-cli not found (needed for `redis-cli --cluster create`)")
    return found


class NodeServer(RedisServer):
    """A ``RedisServer`` (AOF on by default) with extra ``redis-server`` arguments and a
    chosen port."""

    def __init__(self, extra: list[str], *, port: int | None = None, aof: bool = True) -> None:
        super().__init__(aof=aof)
        if port is not None:
            self.port = port
        self.extra = extra


class SentinelProc(server.RedisProcess):
    """One ``redis-server <conf> --sentinel`` process watching master ``gr``."""

    def __init__(self, master_port: int, binary: str) -> None:
        super().__init__(sentinel=True, binary=binary, settings=[
            f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2",
            f"sentinel down-after-milliseconds {MASTER} 1000",
            f"sentinel failover-timeout {MASTER} 4000",
            f"sentinel parallel-syncs {MASTER} 1",
        ])

    @property
    def conf(self) -> Path:
        return self.config_path

    def client(self, db: int = 0, **kw: Any) -> redis.Redis:
        kw.setdefault("socket_timeout", 2)
        return super().client(db, **kw)


class SentinelGroup:
    """Primary + replica + three sentinels; ``url`` is the guardrails Sentinel URL."""

    def __init__(self) -> None:
        self.primary = NodeServer([])
        self.replica = NodeServer([])
        self.sentinels: list[SentinelProc] = []

    def start(self) -> SentinelGroup:
        self.primary.start()
        self.replica.extra = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        wait_replica_online(self.primary)
        self.sentinels = [SentinelProc(self.primary.port, self.primary.binary).start()
                          for _ in range(3)]
        self._wait_sentinels_agree()
        return self

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{nodes}/{MASTER}/0"

    def master_port(self) -> int:
        """The master as the sentinels see it now."""
        _, port = self.sentinels[0].client().sentinel_get_master_addr_by_name(MASTER)
        return int(port)


    def _wait_sentinels_agree(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen = [s.client().sentinel_master(MASTER) for s in self.sentinels]
                if all(int(m.get("num-other-sentinels", 0)) >= 2 and
                       int(m.get("num-slaves", 0)) >= 1 for m in seen):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("sentinels did not discover each other and the replica")

    def wait_failover(self, old_port: int, timeout: float = 40) -> int:
        """Wait until every sentinel names a master other than ``old_port``, and it is
        writable; return its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = {int(s.client().sentinel_get_master_addr_by_name(MASTER)[1])
                         for s in self.sentinels}
                if len(ports) == 1 and old_port not in ports:
                    (port,) = ports
                    role = redis.Redis(port=port, socket_timeout=1).info("replication")["role"]
                    if role == "master":
                        return port
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError("no failover within the timeout")

    def server(self, port: int) -> NodeServer:
        return self.primary if self.primary.port == port else self.replica

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        self.replica.stop()
        self.primary.stop()


class ClusterGroup:
    """Three primaries, no replicas, every slot covered; ``url`` is the guardrails URL."""

    def __init__(self, size: int = 3) -> None:
        self.nodes = [
            NodeServer(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                        "--cluster-config-file", "nodes.conf"], port=free_cluster_port())
            for _ in range(size)
        ]

    def start(self) -> ClusterGroup:
        for n in self.nodes:
            n.start()
        cli = redis_cli(self.nodes[0].binary)
        addrs = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([cli, "--cluster", "create", *addrs, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        self._wait_ok()
        return self

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def _wait_ok(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(n.client().cluster("info").get("cluster_state") == "ok" for n in self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("cluster did not reach state ok")

    def node_for(self, key: str) -> NodeServer:
        """The node that owns ``key``'s slot (the others answer MOVED)."""
        for n in self.nodes:
            try:
                n.client().execute_command("EXISTS", key)
            except redis.exceptions.MovedError:
                continue
            return n
        raise LookupError(key)

    def node_by_port(self, port: int) -> NodeServer:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


def wait_replica_online(primary: RedisServer, timeout: float = 20) -> None:
    """Until ``primary`` has a replica whose link is online (or ``RuntimeError``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = primary.client().info("replication")
        if info.get("connected_slaves", 0) >= 1 and "online" in str(info.get("slave0", "")):
            return
        time.sleep(0.1)
    raise RuntimeError("replica did not come online")
