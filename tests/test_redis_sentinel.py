"""guardrails on real Sentinel (``redis+sentinel://``): primary + replica + three
sentinels. Kill the primary under a running active with a standby: after the failover
exactly one instance holds the lease on the new master, with a token above every token
seen before, and trades."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from guardrails.keys import AccountId, AccountKeys
from tests.ha_harness import SentinelGroup
from tests.run_harness import RunProc, run_cli, write_config

KEYS = AccountKeys(AccountId("paper", "t1"))


@pytest.fixture
def sentinel() -> Iterator[SentinelGroup]:
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.stop()


def test_sentinel_when_primary_killed_under_active_and_standby_then_one_holder_larger_token(
    sentinel: SentinelGroup, tmp_path: Path, artifacts_dir: Path
) -> None:
    cfg = write_config(tmp_path / "c.toml", redis_url=sentinel.url)
    a = RunProc("a", cfg, tmp_path).start()
    b = RunProc("b", cfg, tmp_path, standby=True)
    try:
        a.wait_for("order.admitted", timeout=60)
        b.start()
        b.wait_for("lease.standby", timeout=60)
        time.sleep(1.0)
        old_port = sentinel.master_port()
        seen_before = max(e.int("token") for p in (a, b) for e in p.events("lease.acquired"))

        # Act: SIGKILL the primary; the sentinels promote the replica.
        killed_at = time.time()
        sentinel.server(old_port).kill()
        new_port = sentinel.wait_failover(old_port)

        # Assert: someone leads on the new master with a larger token and trades.
        deadline = time.monotonic() + 60
        after: list[tuple[float, str, int]] = []
        while time.monotonic() < deadline:
            after = sorted((e.ts, p.name, e.int("token")) for p in (a, b)
                           for e in p.events("lease.acquired") if e.ts > killed_at)
            if after and any(e.ts > after[-1][0] for p in (a, b)
                             for e in p.events("order.admitted") if p.name == after[-1][1]):
                break
            time.sleep(0.2)
        assert after, a.text()[-3000:] + b.text()[-3000:]
        assert all(token > seen_before for _, _, token in after), (seen_before, after)
        tokens = [t for _, _, t in after]
        assert tokens == sorted(set(tokens))  # each acquire a new, larger token
        time.sleep(2.0)  # several renewals: the lead must be stable
        master = redis.Redis(port=new_port, decode_responses=True)
        lease = master.get(KEYS.lease)
        assert lease is not None
        token, holder = lease.split(":", 1)
        assert int(token) > seen_before
        # The registry rows are heartbeats (a standby beats slowly): a row that expired
        # during the failover comes back with the next beat. Wait for both.
        deadline = time.monotonic() + 30
        while True:
            roles = {n: master.hget(KEYS.instance(n), "role") for n in ("a", "b")}
            if None not in roles.values() or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(map(str, roles.values())) == ["active", "standby"], roles
        assert roles[holder] == "active"

        status = run_cli("status", "--json", "--redis-url", sentinel.url, "--config", str(cfg))
        assert status.returncode == 0, status.stderr
        (acct,) = json.loads(status.stdout)["accounts"]
        assert acct["lease"]["token"] == int(token)
    finally:
        for p in (a, b):
            p.cleanup()
            (artifacts_dir / f"sentinel-{p.name}.log").write_text(p.text())


def test_sentinel_when_promoted_replica_missed_the_last_acquire_then_token_above_it(
    sentinel: SentinelGroup, tmp_path: Path, artifacts_dir: Path
) -> None:
    # Arrange: an active and a standby on Sentinel; the replica stops applying (SIGSTOP)
    cfg = write_config(tmp_path / "c.toml", redis_url=sentinel.url)
    a = RunProc("a", cfg, tmp_path).start()
    b = RunProc("b", cfg, tmp_path, standby=True)
    try:
        a.wait_for("order.admitted", timeout=60)
        b.start()
        b.wait_for("lease.standby", timeout=60)
        old_port = sentinel.master_port()
        replica = sentinel.server(next(p for p in (sentinel.primary.port, sentinel.replica.port)
                                       if p != old_port))
        replica.pause()
        # the primary drops the stopped replica's link: what follows is never sent to it
        primary = redis.Redis(port=old_port, decode_responses=True)
        primary.execute_command("CLIENT", "KILL", "TYPE", "replica")
        # ... the standby takes over on the primary: a token the replica never receives
        a.send(signal.SIGKILL)
        a.wait_exit()
        missed = b.wait_for("lease.acquired", timeout=60).int("token")
        time.sleep(0.5)

        # Act: the primary dies; the replica (without that acquire) comes back and is promoted
        killed_at = time.time()
        sentinel.server(old_port).kill()
        replica.resume()
        # still a read-only replica (the sentinels need a second to agree): what it holds
        fence = redis.Redis(port=replica.port, decode_responses=True).get(KEYS.fence)
        assert fence is not None and int(fence) < missed  # the history it carries lost it
        sentinel.wait_failover(old_port)

        # Assert: the next acquire is above the token the replica missed, and trades
        took = b.wait_for("lease.acquired", after=killed_at, timeout=60)
        assert took.int("token") > missed, (took.int("token"), missed, fence)
        b.wait_for("order.admitted", after=took.ts, timeout=60)
    finally:
        for p in (a, b):
            p.cleanup()
            (artifacts_dir / f"sentinel-missed-{p.name}.log").write_text(p.text())
