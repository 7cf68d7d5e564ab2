"""A kill is done only when every replica connected to the master acknowledged the latch
(WAIT): otherwise a failover promotes a replica that reads ACTIVE and the bot keeps
trading. A real `guardrails run` bot on a real master with a real replica
(`redis-server --replicaof`), the replica paused with SIGSTOP where the test says so."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ha_harness import NodeServer, wait_replica_online
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc, run_cli, write_config

pytestmark = pytest.mark.slow


@dataclass
class Replicated:
    master: RedisServer
    replica: NodeServer
    cfg: Path


@pytest.fixture
def replicated_bot(tmp_path: Path) -> Iterator[Replicated]:
    """A master (AOF, as `run` requires), one replica of it, and a bot on the master."""
    master = RedisServer(aof=True, fsync="everysec").start()
    replica = NodeServer(["--replicaof", "127.0.0.1", str(master.port)], aof=False)
    try:
        replica.start()
        wait_replica_online(master)
        cfg = write_config(tmp_path / "c.toml", redis_url=master.url)
        bot = RunProc("bot", cfg, tmp_path).start()
        try:
            bot.wait_for("runtime.active")
            yield Replicated(master, replica, cfg)
        finally:
            replica.resume()
            bot.send(signal.SIGTERM)
            bot.wait_exit()
            bot.cleanup()
    finally:
        replica.stop()
        master.stop()


def test_kill_when_replica_acknowledges_then_exit_0_says_replicated_to_1_of_1(
    replicated_bot: Replicated,
) -> None:
    # Act
    killed = run_cli("kill", "--config", str(replicated_bot.cfg), "--reason", "drill")
    replica_state = replicated_bot.replica.client().hget("gr:{paper:t1}:state", "state")
    resumed = run_cli("resume", "--config", str(replicated_bot.cfg))
    # Assert
    assert killed.returncode == 0, (killed.stdout, killed.stderr)
    assert "ACTIVE -> HALTED" in killed.stdout
    assert "replicated to 1/1 replicas" in killed.stdout
    assert replica_state == "HALTED"
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    assert "replicated to 1/1 replicas" in resumed.stdout


def test_kill_when_replica_paused_then_exit_3_says_not_replicated(
    replicated_bot: Replicated,
) -> None:
    # Arrange: the replica stays connected (its socket is open) but acknowledges nothing.
    replicated_bot.replica.pause()
    # Act
    killed = run_cli("kill", "--config", str(replicated_bot.cfg), "--reason", "drill")
    resumed = run_cli("resume", "--config", str(replicated_bot.cfg))
    # Assert: the bot confirmed, but a failover now would lose the latch: not success.
    assert killed.returncode == 3, (killed.stdout, killed.stderr)
    assert "1 instance(s) confirmed" in killed.stdout
    assert "replicated to 0/1 replicas" in killed.stdout
    assert "NOT REPLICATED" in killed.stderr and "paper:t1 (0/1)" in killed.stderr
    assert "Traceback" not in killed.stderr
    assert resumed.returncode == 3, (resumed.stdout, resumed.stderr)
    assert "NOT REPLICATED" in resumed.stderr
