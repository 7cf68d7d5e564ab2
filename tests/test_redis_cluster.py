"""guardrails on a real three-primary Redis Cluster (``redis+cluster://``).

``test_cluster_when_30_process_pairs_…`` is the issue's drill at full size: 30 accounts
over the three primaries, each with an active and a standby ``guardrails run`` (sixty
processes): SIGKILL one account's active → its standby takes over with a larger token
and trades; a graceful stop on each primary → the release's pub/sub message wakes that
account's standby (its lease had a minute left); ``kill --all`` halts every account and
each running instance confirms it through its kill listener; ``status --json`` shows all
30. It took 30 s on this 2-core machine (22 s of it the sixty interpreters starting);
its waits allow for several times that under load.

``test_cluster_when_30_accounts_then_…`` covers the library level on 30 accounts: every
key of an account on one node, the gate refusing each account after ``kill --all``,
``doctor`` reading every node's persistence; three of its accounts are process pairs.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from guardrails import limits
from guardrails.config import LeaseConfig, RuntimeConfig
from guardrails.gate import OrderGate
from guardrails.infra import connect
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys
from guardrails.lease import Acquired, Lease
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Denied, DenyReason, client_order_id_for
from guardrails.registry import InstanceInfo, Registry
from tests import gatekit
from tests.ha_harness import ClusterGroup
from tests.run_harness import RunProc, run_cli, write_config

ACCOUNTS = [f"c{i:02d}" for i in range(30)]
PROCESS_ACCOUNTS = ACCOUNTS[:3]
LIBRARY_ACCOUNTS = ACCOUNTS[3:]
TTL_S = 1.5


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterGroup]:
    group = ClusterGroup().start()
    try:
        yield group
    finally:
        group.stop()


@pytest.fixture
async def client(cluster: ClusterGroup) -> AsyncIterator[aioredis.Redis]:
    c = await connect.connect(cluster.url)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
def procs(tmp_path: Path, artifacts_dir: Path) -> Iterator[list[RunProc]]:
    started: list[RunProc] = []
    try:
        yield started
    finally:
        for p in started:
            p.cleanup()
            if p.log_path.exists():
                (artifacts_dir / f"cluster-{p.name}.log").write_text(p.text())


def _keys(name: str) -> AccountKeys:
    return AccountKeys(AccountId("paper", name))


async def _library_account(client: aioredis.Redis, name: str) -> tuple[int, OrderGate, str]:
    """One account driven in this process: real lease, limits, marks, registry row, and
    one admitted order. Returns (token, gate, holder)."""
    keys = _keys(name)
    holder = f"lib-{name}"
    lease = Lease(client, keys, holder, LeaseConfig(ttl="60s", renew_deadline="50s",
                                                    renew_interval="10s"))
    acquired = await lease.try_acquire()
    assert isinstance(acquired, Acquired), acquired
    risk = gatekit.risk()
    assert await limits.check_or_init(client, keys, risk, holder) is None
    await Ledger(client, keys, risk).update_marks({gatekit.SYMBOL: Decimal("60000")})
    info = InstanceInfo.for_this_process(str(keys.account), config_digest="x",
                                         limits_digest="y", standby_flag=False,
                                         instance_id=holder)
    await Registry(client, keys, info, RuntimeConfig()).heartbeat("active", acquired.token,
                                                                   ttl_ms=600_000)
    gate = OrderGate(client, keys, risk)
    decision = await gate.admit(gatekit.buy("0.001"), intent_id=f"{name}-1",
                                token=acquired.token, holder_id=holder)
    assert isinstance(decision, Admitted), decision
    return acquired.token, gate, holder


async def test_cluster_when_30_accounts_then_spread_over_3_primaries_kill_all_halts_all(
    cluster: ClusterGroup, client: aioredis.Redis, tmp_path: Path, procs: list[RunProc]
) -> None:
    # Arrange: 3 accounts as real active + standby processes ...
    pairs: dict[str, tuple[RunProc, RunProc]] = {}
    for name in PROCESS_ACCOUNTS:
        cfg = write_config(tmp_path / f"{name}.toml", redis_url=cluster.url, account=name)
        active = RunProc(f"{name}-a", cfg, tmp_path).start()
        procs.append(active)
        active.wait_for("lease.acquired", timeout=60)
        standby = RunProc(f"{name}-b", cfg, tmp_path, standby=True).start()
        procs.append(standby)
        pairs[name] = (active, standby)
    # ... and 27 more driven here through the same scripts.
    library = {name: await _library_account(client, name) for name in LIBRARY_ACCOUNTS}
    for active, standby in pairs.values():
        active.wait_for("order.admitted", timeout=60)
        standby.wait_for("lease.standby", timeout=60)

    # Assert: the accounts' slots are spread over all three primaries, every account's
    # keys on one node (the lease, fence, gate and ledger keys share the hash tag).
    owners: Counter[int] = Counter()
    for name in ACCOUNTS:
        k = _keys(name)
        node = cluster.node_for(k.lease)
        assert {cluster.node_for(x).port for x in (k.fence, k.state, k.positions,
                                                     k.journal, k.instances)} == {node.port}
        owners[node.port] += 1
    assert len(owners) == 3, owners
    assert min(owners.values()) >= 3, owners

    # Act 1: SIGKILL one account's active; its standby takes over with a larger token.
    name = PROCESS_ACCOUNTS[0]
    active, standby = pairs[name]
    first = active.events("lease.acquired")[0].int("token")
    killed_at = time.time()
    active.send(signal.SIGKILL)
    active.wait_exit()
    took = standby.wait_for("lease.acquired", timeout=30)
    assert took.int("token") > first
    standby.wait_for("order.admitted", after=took.ts, timeout=30)
    assert took.ts - killed_at < TTL_S + 10  # generous: a loaded 2-core box

    # Act 2: kill --all over the cluster.
    result = await asyncio.to_thread(
        run_cli, "kill", "--all", "--reason", "cluster drill", "--redis-url", cluster.url,
        "--confirm-timeout", "3")
    # 27 of the accounts have no running instance (their traffic is this test's): unconfirmed.
    assert result.returncode == 3 and "NOT CONFIRMED" in result.stderr, result.stderr
    halted = [ln for ln in result.stdout.splitlines() if "-> HALTED" in ln]
    assert len(halted) == 30, result.stdout
    assert sorted(await client.smembers(ACCOUNTS_INDEX)) == sorted(f"paper:{n}" for n in ACCOUNTS)

    # Assert: every account refuses; the running processes saw the latch.
    for lname, (token, gate, holder) in library.items():
        decision = await gate.admit(gatekit.buy("0.001"), intent_id=f"{lname}-2",
                                    token=token, holder_id=holder)
        assert isinstance(decision, Denied) and decision.reason is DenyReason.HALTED, decision
    for pname, (a, b) in pairs.items():
        live = b if pname == name else a
        live.wait_for("order.denied", after=killed_at, timeout=30,
                      where=lambda e: e.get("reason") == "halted")

    # Assert: status --json shows all 30, halted, each with its lease holder.
    result = await asyncio.to_thread(
        run_cli, "status", "--json", "--redis-url", cluster.url, "--config", "")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    shown = {a["account"]: a for a in doc["accounts"]}
    assert sorted(shown) == sorted(f"paper:{n}" for n in ACCOUNTS)
    assert {a["trading"]["state"] for a in shown.values()} == {"HALTED"}
    assert all(a["lease"] is not None for a in shown.values())
    assert all(a["errors"] == [] for a in shown.values()), [a["errors"] for a in shown.values()]

    # Assert: doctor reads every node (persistence) and every account's lease.
    result = await asyncio.to_thread(
        run_cli, "doctor", "--json", "--redis-url", cluster.url, "--manifest", "")
    report = json.loads(result.stdout)
    assert report["persistence"]["durability"] == "durable"
    assert set(report["leases"]) == {f"paper:{n}" for n in ACCOUNTS}
    assert "redis_not_durable" not in {f["code"] for f in report["findings"]}


PAIR_ACCOUNTS = [f"p{i:02d}" for i in range(30)]
SLOW_TTL = {"ttl": "60s", "renew_deadline": "50s", "renew_interval": "2s"}
"""Timings of the accounts whose graceful handover proves the release wake-up: a standby
that was not woken would wait for the lease's expiry (about a minute)."""


def _pair_config(tmp_path: Path, url: str, name: str, **timing: str) -> Path:
    cfg = write_config(tmp_path / f"{name}.toml", redis_url=url, account=name,
                       looper={"interval": "2s", "count": 3}, **timing)
    # 60 processes share two loaded cores here: a slower reply is not a lost Redis
    cfg.write_text(cfg.read_text().replace('socket_timeout = "500ms"', 'socket_timeout = "3s"'))
    return cfg


@pytest.fixture
def own_cluster() -> Iterator[ClusterGroup]:
    """A cluster of this test's alone: `kill --all` must find only accounts that run."""
    group = ClusterGroup().start()
    try:
        yield group
    finally:
        group.stop()


def test_cluster_when_30_process_pairs_then_takeover_wakeups_kill_all_and_status(
    own_cluster: ClusterGroup, tmp_path: Path, procs: list[RunProc]
) -> None:
    cluster = own_cluster
    # Arrange: 30 accounts, each an active and a standby `guardrails run` (60 processes)
    owner = {n: cluster.node_for(_keys(n).lease).port for n in PAIR_ACCOUNTS}
    by_node: dict[int, list[str]] = {}
    for n, port in owner.items():
        by_node.setdefault(port, []).append(n)
    assert len(by_node) == 3, by_node
    graceful = [names[-1] for names in by_node.values()]  # one per primary
    crashed = next(n for n in PAIR_ACCOUNTS if n not in graceful)
    pairs: dict[str, tuple[RunProc, RunProc]] = {}
    t0 = time.monotonic()
    for n in PAIR_ACCOUNTS:
        cfg = _pair_config(tmp_path, cluster.url, n, **(SLOW_TTL if n in graceful else {}))
        active = RunProc(f"{n}-a", cfg, tmp_path).start()
        procs.append(active)
        pairs[n] = (active, RunProc(f"{n}-b", cfg, tmp_path, standby=True))
    for active, _ in pairs.values():
        active.wait_for("order.admitted", timeout=120)
    for _, standby in pairs.values():
        procs.append(standby.start())
    for _, standby in pairs.values():
        standby.wait_for("lease.standby", timeout=120)
    booted = time.monotonic() - t0

    # Act 1: SIGKILL one account's active: its standby takes over with a larger token
    active, standby = pairs[crashed]
    first = active.events("lease.acquired")[0].int("token")
    active.send(signal.SIGKILL)
    active.wait_exit()
    took = standby.wait_for("lease.acquired", timeout=60)
    assert took.int("token") > first
    standby.wait_for("order.admitted", after=took.ts, timeout=60)

    # Act 2: a graceful stop on each primary: the release wakes its standby (pub/sub on the
    # account's node), long before the 60 s lease could have expired
    for n in graceful:
        active, standby = pairs[n]
        active.send(signal.SIGTERM)
    for n in graceful:
        active, standby = pairs[n]
        assert active.wait_exit(60) == 0
        released = active.wait_for("lease.released", timeout=5)
        acquired = standby.wait_for("lease.acquired", after=released.ts - 0.01, timeout=30)
        assert acquired.ts - released.ts < 20, (n, acquired.ts - released.ts)

    # Act 3: kill --all: every account halted, and each confirmed by its running instance
    # (the kill listener of each account, subscribed on the node that owns it)
    killed_at = time.time()
    result = run_cli("kill", "--all", "--reason", "cluster drill", "--redis-url", cluster.url,
                     "--confirm-timeout", "20", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    halted = [ln for ln in result.stdout.splitlines() if "-> HALTED" in ln]
    assert len(halted) == 30, result.stdout
    for n, (active, standby) in pairs.items():
        live = standby if n in graceful or n == crashed else active
        live.wait_for("kill.halted", after=killed_at - 1, timeout=60)

    # Assert: status --json shows all 30 halted, each with its lease holder
    result = run_cli("status", "--json", "--redis-url", cluster.url, "--config", "")
    assert result.returncode == 0, result.stderr
    shown = {a["account"]: a for a in json.loads(result.stdout)["accounts"]}
    assert set(shown) >= {f"paper:{n}" for n in PAIR_ACCOUNTS}
    for n in PAIR_ACCOUNTS:
        acct = shown[f"paper:{n}"]
        assert acct["trading"]["state"] == "HALTED", acct
        assert acct["lease"] is not None, acct
    print(f"30 pairs booted in {booted:.0f}s, whole test {time.monotonic() - t0:.0f}s")


async def test_cluster_when_accounts_pruned_then_each_accounts_sweep_finds_its_orders(
    client: aioredis.Redis, tmp_path: Path
) -> None:
    """The sweep's SCAN walks every primary: accounts whose slots live on different
    primaries each have their old terminal order archived, removed and refused again."""
    from guardrails.prune import Archive, Pruner, read_archive

    for name in ("prune-a", "prune-b", "prune-c", "prune-d"):
        keys = _keys(name)
        token, gate, holder = await _library_account(client, name)
        coid = client_order_id_for(f"{name}-1")
        await Ledger(client, keys, gatekit.risk()).mark_canceled(coid, "test")
        updated = int(await client.hget(keys.order(coid), "updated_ms"))
        pruner = Pruner(client, keys, Archive(tmp_path / name / "a.jsonl"),
                        retention_ms=3_600_000)
        rep = await pruner.sweep(now_ms=updated + 3_600_000)
        assert rep.pruned == [coid], (name, rep)
        assert set(read_archive(pruner.archive.path).orders) == {coid}
        again = await gate.admit(gatekit.buy("0.001"), intent_id=f"{name}-1", token=token,
                                 holder_id=holder)
        assert isinstance(again, Denied) and again.reason is DenyReason.INTENT_PRUNED
