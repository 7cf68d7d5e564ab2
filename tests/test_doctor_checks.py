"""The doctor's judge on snapshots built by hand: each check finds its drift (and only
it), and the findings come in the documented order. No Redis, no processes: the checks
are pure functions of the snapshot (the gather step is tested end to end in
tests/test_doctor.py and tests/test_doctor_processes.py)."""

from __future__ import annotations

from typing import Any

from guardrails.infra.persistence import Persistence
from guardrails.ops.doctor.checks import Census, judge
from guardrails.ops.doctor.manifest import Manifest
from guardrails.ops.doctor.snapshot import AccountSnapshot, LocalProcess, RegistryRow, Snapshot

NOW = 1_700_000_000_000
ACCOUNT = "paper:demo"
DURABLE = (("", Persistence(aof_enabled=True, appendfsync="always", save="")),)


def row(iid: str, *, host: str = "host-a", pid: int = 100, role: str = "standby",
        token: int | None = None, silent_ms: int = 0, ttl_ms: int | None = 3_000,
        limits: str = "L1", config: str = "C1", standby: bool = False) -> RegistryRow:
    return RegistryRow({
        "id": iid, "account": ACCOUNT, "host": host, "pid": str(pid), "role": role,
        "token": "" if token is None else str(token), "last_seen_ms": str(NOW - silent_ms),
        "limits_digest": limits, "config_digest": config, "standby_flag": "1" if standby else "0",
    }, ttl_ms)


def account(*rows: RegistryRow, lease: str | None = None, pttl: int = 1_000, fence: int | None = 7,
            **kw: Any) -> AccountSnapshot:
    return AccountSnapshot(ACCOUNT, lease_value=lease, lease_pttl_ms=pttl if lease else -2,
                           fence=fence, rows=tuple(rows), **kw)


def proc(pid: int, *, account: str | None = ACCOUNT, standby: bool = False,
         target: str | None = "redis://r/0", limits: str = "L1",
         error: str | None = None) -> LocalProcess:
    return LocalProcess(pid=pid, cmdline=["guardrails", "run"], account=account,
                        redis_target=target, standby=standby, config_digest="C1",
                        limits_digest=limits, error=error)


def snap(*accounts: AccountSnapshot, processes: tuple[LocalProcess, ...] = (),
         ours: tuple[int, ...] | None = None, live: tuple[int, ...] = (),
         persistence: tuple[tuple[str, Persistence], ...] = DURABLE) -> Snapshot:
    return Snapshot(
        host="host-a", now_ms=NOW, redis_target="redis://r/0", processes=processes,
        ours=frozenset(p.pid for p in processes) if ours is None else frozenset(ours),
        live_pids=frozenset(live), accounts={a.account: a for a in accounts},
        persistence=persistence)


def manifest(instances: int, hosts: tuple[str, ...] = (), **kw: Any) -> Manifest:
    return Manifest.model_validate(
        {"accounts": [{"account": ACCOUNT, "instances": instances, "hosts": list(hosts)}], **kw})


def codes(c: Census) -> list[str]:
    return [f.code for f in c.findings]


def test_judge_when_active_holds_lease_and_standby_waits_as_manifest_says_then_no_finding() -> None:
    # Arrange
    s = snap(account(row("a1", pid=100, role="active", token=7), row("b1", host="host-b", pid=5),
                     lease="7:a1"),
             processes=(proc(100),))

    # Act
    c = judge(s, manifest(2, ("host-a", "host-b")))

    # Assert
    assert c.findings == []
    sources = {i.id: sorted(i.sources) for i in c.instances}
    assert sources == {"a1": ["lease", "process", "registry"], "b1": ["registry"]}
    assert c.leases[ACCOUNT] == {"holder": "a1", "token": 7, "ttl_ms": 1_000, "fence": 7}
    assert c.persistence["durability"] == "durable"


def test_judge_when_many_drifts_then_findings_follow_the_documented_check_order() -> None:
    # Arrange: one drift for (almost) every step of one account, plus a process nobody
    # can attribute and a volatile server
    s = snap(
        account(row("a1", pid=100, role="active", token=5, limits="L1"),
                row("a2", pid=101, role="active", token=6, limits="L2"),
                lease="9:ghost", fence=8,
                wrong_types=(("marks", "gr:{paper:demo}:marks", "string (expected hash)"),),
                expired=(("old", NOW - 90_000),),
                fence_alarm={"reason": "history_lost", "by": "a1", "seen_token": "9"}),
        processes=(proc(100), proc(101), proc(102), proc(300, account=None, target=None,
                                                           error="c.toml: not found")),
        live=(100, 101),
        persistence=(("", Persistence(aof_enabled=False, appendfsync=None, save="")),),
    )

    # Act
    c = judge(s, manifest(1))

    # Assert
    assert codes(c) == [
        "unidentified_process",        # 0
        "wrong_key_type",              # 1
        "fence_behind_lease",          # 2
        "stale_registration",          # 3 (the expired row)
        "unregistered_process",        # 4 (pid 102)
        "lease_holder_unregistered",   # 5
        "multiple_active",             # 5
        "duplicate_on_host",           # 6
        "limits_mismatch",             # 7
        "unexpected_instances",        # 8
        "fence_history_lost",          # 9
        "redis_not_durable",           # 10
    ]


def test_check_lease_when_value_malformed_or_without_expiry_then_each_named() -> None:
    c = judge(snap(account(lease="no-colon", pttl=-1)), None)

    assert codes(c) == ["lease_malformed", "lease_without_ttl", "lease_holder_unregistered"]
    assert c.leases[ACCOUNT]["holder"] == "no-colon" and c.leases[ACCOUNT]["token"] is None


def test_check_lease_when_token_above_fence_or_fence_unreadable_then_fence_behind_lease() -> None:
    above = judge(snap(account(row("a1", role="active", token=9), lease="9:a1", fence=8)), None)
    missing = judge(snap(account(row("a1", role="active", token=9), lease="9:a1", fence=None)),
                    None)
    equal = judge(snap(account(row("a1", role="active", token=9), lease="9:a1", fence=9)), None)

    assert "fence_behind_lease" in codes(above) and "fence_behind_lease" in codes(missing)
    assert "fence_behind_lease" not in codes(equal)


def test_check_registry_when_row_silent_then_stale_judged_against_its_own_ttl() -> None:
    # Arrange: both silent 20 s; the active's record had 1 s left (a 21 s TTL would be
    # odd), the standby's 40 s (it beats every 15 s and gives its record 45 s)
    s = snap(account(row("act", host="host-z", silent_ms=20_000, ttl_ms=1_000),
                     row("stb", host="host-z", silent_ms=20_000, ttl_ms=40_000, standby=True)))

    # Act
    c = judge(s, None)

    # Assert: stale after max(stale_after, ttl/2): 20 s > 10.5 s, but not > 30 s
    stale = [f for f in c.findings if f.code == "stale_registration"]
    assert [f.message.split()[1] for f in stale] == ["act"]
    assert stale[0].severity == "warning" and "20s ago" in stale[0].message


def test_check_registry_when_manifest_sets_stale_after_then_it_is_the_floor() -> None:
    s = snap(account(row("act", host="host-z", silent_ms=20_000, ttl_ms=1_000)))

    c = judge(s, Manifest.model_validate({"stale_after": "30s"}))

    assert "stale_registration" not in codes(c)


def test_check_registry_when_heartbeat_keys_mistyped_then_each_named() -> None:
    s = snap(account(bad_heartbeat_keys=(("gr:{paper:demo}:instance:x", "string"),)))

    c = judge(s, None)

    assert codes(c) == ["wrong_key_type"]
    assert "instance:x" in c.findings[0].message and "(expected hash)" in c.findings[0].message


def test_check_processes_when_registered_pid_gone_then_warning_unless_it_still_runs() -> None:
    # Arrange: pid 100 is registered on this host and runs (under another Redis, so not
    # one of ours); pid 200 is registered here and runs nowhere
    s = snap(account(row("a1", pid=100), row("a2", pid=200)), live=(100,))

    # Act
    c = judge(s, None)

    # Assert
    gone = [f for f in c.findings if f.code == "registered_without_process"]
    assert len(gone) == 1 and "pid 200" in gone[0].message and gone[0].severity == "warning"


def test_check_processes_when_run_never_registered_then_instance_from_process_table() -> None:
    # Arrange: pid 102 runs against this Redis, pid 103 against another one
    s = snap(account(), processes=(proc(102), proc(103, target="redis://other/0")), ours=(102,))

    # Act
    c = judge(s, None)

    # Assert: 102 is an instance that never registered; 103 is the same account in
    # another lease domain (its own lease and limits): an error of its own
    assert codes(c) == ["unregistered_process", "account_on_other_redis"]
    assert [(i.pid, i.sources) for i in c.instances] == [(102, ["process"])]
    other = c.findings[1]
    assert other.problem and "pid 103 " in other.message and "redis://other/0" in other.message


def test_check_unidentified_when_config_unreadable_then_info_only_if_it_may_use_this_redis() -> None:
    s = snap(processes=(proc(1, account=None, target=None, error="bad"),
                        proc(2, account=None, target="redis://other/0", error="bad")),
             ours=())

    c = judge(s, None)

    assert codes(c) == ["unidentified_process"]
    assert c.findings[0].severity == "info" and "pid 1 " in c.findings[0].message
    assert not any(f.problem for f in c.findings)


def test_check_holder_when_single_active_has_old_token_then_active_with_stale_token() -> None:
    s = snap(account(row("a1", role="active", token=6), row("b1", host="host-b", pid=101),
                     lease="7:b1"), live=(100,))

    c = judge(s, None)

    assert codes(c) == ["active_with_stale_token"]


def test_check_copies_when_two_plain_copies_on_one_host_then_duplicate_unless_declared() -> None:
    two_plain = snap(account(row("a1", pid=100), row("a2", pid=101)), live=(100, 101))
    one_standby = snap(account(row("a1", pid=100), row("a2", pid=101, standby=True)),
                       live=(100, 101))
    allowed = Manifest.model_validate(
        {"accounts": [{"account": ACCOUNT, "instances": 2, "max_per_host": 2}]})

    assert codes(judge(two_plain, None)) == ["duplicate_on_host"]
    assert codes(judge(one_standby, None)) == []
    assert codes(judge(two_plain, allowed)) == []


def test_check_digests_when_configs_differ_then_config_mismatch_names_each() -> None:
    s = snap(account(row("a1", host="h1", config="C1"), row("b1", host="h2", config="C2")))

    c = judge(s, None)

    assert codes(c) == ["config_mismatch"]
    assert "a1@h1=C1" in c.findings[0].message and "b1@h2=C2" in c.findings[0].message


def test_check_manifest_when_counts_and_hosts_drift_then_each_direction_reported() -> None:
    one_on_c = snap(account(row("a1", host="host-c")))

    assert codes(judge(one_on_c, manifest(2, ("host-a", "host-b")))) == [
        "missing_instances", "unexpected_host", "missing_on_host", "missing_on_host"]
    assert codes(judge(one_on_c, manifest(0))) == ["unexpected_instances"]
    assert codes(judge(one_on_c, Manifest())) == ["unexpected_account"]
    assert codes(judge(one_on_c, None)) == []  # no manifest: nothing to compare with


def test_check_manifest_when_fewer_copies_than_hosts_then_empty_host_is_not_missing() -> None:
    s = snap(account(row("a1", host="host-a")), live=(100,))

    assert codes(judge(s, manifest(1, ("host-a", "host-b")))) == []


def test_check_fence_history_when_alarm_set_then_recover_command_named() -> None:
    s = snap(account(fence_alarm={"reason": "epoch_changed", "by": "a1", "seen_token": "41",
                                  "seen_epoch": "e1", "fence": "3"}))

    c = judge(s, None)

    assert codes(c) == ["fence_history_lost"]
    assert "another history" in c.findings[0].message and "token 41" in c.findings[0].message
    assert f"guardrails fence recover --account {ACCOUNT}" in c.findings[0].action


def test_check_persistence_when_one_primary_volatile_then_it_speaks_for_the_cluster() -> None:
    readings = (("n1", Persistence(True, "always", "")), ("n2", Persistence(False, None, "3600 1")),
                ("n3", Persistence(None, None, None, ("CONFIG: NOPERM",))))

    strict = judge(snap(persistence=readings), None)
    allowed = judge(snap(persistence=readings), Manifest(allow_non_durable=True))

    assert codes(strict) == ["redis_not_durable"] and strict.findings[0].severity == "error"
    assert " node n2 " in strict.findings[0].message and "RDB" in strict.findings[0].message
    assert strict.persistence["node"] == "n2"
    assert allowed.findings[0].severity == "info"


def test_check_persistence_when_settings_unreadable_then_info() -> None:
    c = judge(snap(persistence=(("", Persistence(None, None, None, ("INFO: NOPERM",))),)), None)

    assert codes(c) == ["redis_persistence_unknown"] and c.findings[0].severity == "info"


def test_check_fees_uncounted_when_fills_today_lacked_their_fee_then_warning_with_action() -> None:
    c = judge(snap(account(trading_day="2026-12-03", fees_uncounted="3")), None)

    assert codes(c) == ["fees_uncounted"] and c.findings[0].severity == "warning"
    assert "3 fill(s) on trading day 2026-12-03" in c.findings[0].message
    assert "turn BNB fee payment off, or account for these fees by hand" in c.findings[0].action


def test_check_fees_uncounted_when_none_or_zero_then_no_finding_and_unreadable_is_named() -> None:
    quiet = [judge(snap(account(trading_day="2026-12-03", fees_uncounted=v)), None)
             for v in (None, "0")]
    odd = judge(snap(account(trading_day="2026-12-03", fees_uncounted="1.5")), None)

    assert [codes(c) for c in quiet] == [[], []]
    assert codes(odd) == ["fees_uncounted"] and "unreadable ('1.5')" in odd.findings[0].message
