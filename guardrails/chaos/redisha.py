"""The chaos run's replicated Redis (``--redis sentinel``): a primary and a replica
(``redis-server`` with AOF, ``appendfsync always``) and three ``redis-server --sentinel``
watching master ``gr`` with quorum 2, on free loopback ports (never 6379).

Instances connect through the sentinels (``redis+sentinel://``), so a failover is
seen the way production sees it: the sentinels promote the replica and every client
asks them for the new master. The harness SIGKILLs the primary (the
``sentinel_failover`` fault), waits until every sentinel names the other node, and
later starts the old primary again as a replica of the new one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis

from guardrails.infra.server import RedisProcess

MASTER = "gr"


def _master_port(sentinel: redis.Redis) -> int:
    """The master port one sentinel names (raises ``RuntimeError`` when it names none)."""
    reply: Any = sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)  # type: ignore[no-untyped-call]
    if not reply:
        raise RuntimeError("the sentinel names no master")
    return int(reply[1])


def sentinel_process(data_dir: Path, master_port: int) -> RedisProcess:
    """One ``redis-server --sentinel`` (the unified launcher) watching ``master_port``."""
    return RedisProcess(data_dir, sentinel=True, settings=[
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 2",
        f"sentinel down-after-milliseconds {MASTER} 1000",
        f"sentinel failover-timeout {MASTER} 4000",
        f"sentinel parallel-syncs {MASTER} 1",
    ])


class SentinelRedis:
    """Primary + replica + three sentinels. ``url`` is the guardrails Sentinel URL."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.nodes = [RedisProcess(data_dir / "node-a"), RedisProcess(data_dir / "node-b")]
        self.sentinels: list[RedisProcess] = []
        self.restarts = 0
        self.failovers = 0

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{nodes}/{MASTER}/0"

    def start(self) -> None:
        primary, replica = self.nodes
        primary.start()
        replica.extra = ["--replicaof", "127.0.0.1", str(primary.port)]
        replica.start()
        self.wait_replica(primary)
        self.sentinels = [sentinel_process(self.dir / f"sentinel-{i}", primary.port)
                          for i in range(3)]
        for s in self.sentinels:
            s.start()
        self._wait_sentinels_agree()

    def master(self) -> RedisProcess:
        """The node every sentinel names as master now (the first one asked decides
        when they disagree mid-failover)."""
        for s in self.sentinels:
            try:
                port = _master_port(s.client())
            except (redis.RedisError, OSError, RuntimeError):
                continue
            for n in self.nodes:
                if n.port == int(port):
                    return n
        raise RuntimeError("no sentinel names a master")

    def client(self, db: int = 0) -> redis.Redis:
        """A client of the current master."""
        return self.master().client(db)

    def wait_replica(self, primary: RedisProcess, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                info = primary.client().info("replication")
                if int(info.get("connected_slaves", 0)) >= 1 and "online" in str(info.get("slave0", "")):
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the replica did not come online")

    def _wait_sentinels_agree(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen: list[Any] = [s.client().sentinel_master(MASTER) for s in self.sentinels]
                if all(int(m.get("num-other-sentinels", 0)) >= 2
                       and int(m.get("num-slaves", 0)) >= 1 for m in seen):
                    return
            except (redis.RedisError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the sentinels did not discover each other and the replica")

    def kill_master(self) -> RedisProcess:
        """SIGKILL the current master; returns it (down until ``rejoin``)."""
        old = self.master()
        old.kill()
        return old

    def wait_failover(self, old: RedisProcess, timeout: float = 45) -> RedisProcess:
        """Until every sentinel names the other node and it answers as a master."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = {_master_port(s.client()) for s in self.sentinels}
                if len(ports) == 1 and old.port not in ports:
                    new = next(n for n in self.nodes if n.port in ports)
                    if new.client().info("replication")["role"] == "master":
                        self.failovers += 1
                        return new
            except (redis.RedisError, OSError, StopIteration, RuntimeError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"no failover within {timeout}s of killing :{old.port}")

    def rejoin(self, old: RedisProcess, new: RedisProcess) -> None:
        """Start the old primary again, as a replica of the new one (the sentinels would
        reconfigure it anyway; starting it as a replica means it never serves its stale
        data as a master meanwhile)."""
        old.extra = ["--replicaof", "127.0.0.1", str(new.port)]
        old.start()
        self.restarts += 1
        self.wait_replica(new)

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.stop()
