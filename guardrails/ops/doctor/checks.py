"""The doctor's judge step: pure, ordered checks over one ``Snapshot``.

Invariant served: *one writer per account* (DESIGN.md §1) — seen from outside. Count the
processes before you count the rows: an instance is the union of what the registry, the
lease and this host's process table say about it (``Instance.sources``), and each check
compares those sources with each other and with the manifest, in both directions.

``judge`` runs the checks in this order, and the findings keep it (scripts and people
read the first finding first):

0. processes on this host whose config cannot be read (info);
for each account, sorted:
1. keys of the wrong type (every other reading of the account is suspect);
2. the lease: malformed, without expiry, above the fencing counter;
3. the registry: heartbeat records of the wrong type, expired and silent rows;
4. this host's process table: registered pids that do not run, runs that never registered,
   runs of the account against another Redis (a second lease domain);
5. the lease holder is a registered instance, and at most one instance claims ``active``;
6. copies per host (a deliberate extra copy says ``--standby``);
7. every instance runs the same limits and the same config;
8. the manifest: missing and unexpected instances, accounts and hosts;
9. the fence history alarm;
10. the prune sweep: its last batch failed, or it has not run for ``PRUNE_OVERDUE_FACTOR``
    intervals while an instance is active;
11. fees the ledger could not count today (a warning: the loss budget undercounts them);
then, once: 12. the server's persistence (would a restart lose the fencing counter?).

No check does I/O: each is a function of the snapshot (and the manifest), so each is
tested on a snapshot built by hand (``tests/test_doctor_checks.py``). Each finding
names what is wrong and what to do.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from guardrails import redacted
from guardrails.infra import connect, persistence
from guardrails.keys import AccountId, AccountKeys
from guardrails.ops.doctor.manifest import DEFAULT_STALE_AFTER_MS, Manifest, ManifestAccount
from guardrails.ops.doctor.snapshot import AccountSnapshot, LocalProcess, Snapshot, as_int

PRUNE_OVERDUE_FACTOR = 3
"""The prune sweep is overdue when neither it nor its schedule's start is more recent
than this many ``[prune] interval``s (a sweep of a large backlog takes a while)."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: ``code`` is stable (for scripts), ``message`` and ``action`` for people."""

    code: str
    account: str | None
    message: str
    action: str
    severity: str = "error"
    """``error`` / ``warning``: drift in this deployment (exit 1). ``info``: seen, but not
    attributable to the checked Redis (e.g. a process whose config cannot be read) —
    listed for the operator, does not change the exit code."""

    @property
    def problem(self) -> bool:
        return self.severity != "info"

    def to_json(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "account": self.account,
            "message": self.message,
            "action": self.action,
        }


@dataclass(slots=True)
class Instance:
    """One running copy as seen by the union of sources."""

    account: str
    host: str
    pid: int | None
    id: str | None = None
    role: str | None = None
    token: int | None = None
    standby_flag: bool = False
    config_digest: str | None = None
    limits_digest: str | None = None
    last_seen_ms: int | None = None
    sources: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "role": self.role,
            "token": self.token,
            "standby": self.standby_flag,
            "config_digest": self.config_digest,
            "limits_digest": self.limits_digest,
            "last_seen_ms": self.last_seen_ms,
            "sources": sorted(self.sources),
        }


@dataclass(slots=True)
class Census:
    """The verdict: every finding in check order, the instances as the sources united
    them, each account's lease, and the server's persistence."""

    findings: list[Finding] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    persistence: dict[str, Any] = field(default_factory=dict)

    def add(self, code: str, account: str | None, message: str, action: str,
            severity: str = "error") -> None:
        # Masked here, once: a finding is printed, put in --json and sent as an alert
        # (the 'doctor' event), and may quote another process's config error or URL.
        self.findings.append(Finding(code, account, redacted.mask_text(message),
                                     redacted.mask_text(action), severity))


def judge(s: Snapshot, manifest: Manifest | None) -> Census:
    """Every check, in the documented order, over one snapshot."""
    c = Census()
    check_unidentified_processes(c, s)
    wanted = {a.account: a for a in manifest.accounts} if manifest else {}
    stale_after = manifest.stale_after_ms if manifest else DEFAULT_STALE_AFTER_MS
    for account in sorted(s.accounts):
        a = s.accounts[account]
        procs = [p for p in s.processes if p.pid in s.ours and p.account == account]
        check_key_types(c, a)
        lease_token, lease_holder = check_lease(c, a)
        instances = check_registry(c, a, s.now_ms, stale_after)
        check_processes(c, a, s, procs, instances)
        check_other_redis(c, account, s)
        check_holder_and_active(c, a, instances, lease_token, lease_holder)
        per_host = check_copies_per_host(c, account, instances, wanted.get(account))
        check_digests(c, account, instances)
        if manifest is not None:
            check_manifest(c, account, instances, per_host, wanted.get(account))
        c.instances.extend(instances)
        check_fence_history(c, a)
        check_prune(c, a, instances, s.now_ms)
        check_fees_uncounted(c, a)
    check_persistence(c, s.persistence,
                      allow_non_durable=bool(manifest and manifest.allow_non_durable))
    return c


# -- 0. processes nobody can attribute ------------------------------------------------


def check_unidentified_processes(c: Census, s: Snapshot) -> None:
    for p in s.processes:
        if p.error and (p.redis_target is None or p.pid in s.ours):
            c.add("unidentified_process", None,
                  f"pid {p.pid} on {s.host} runs `guardrails run` but its config is unreadable: "
                  f"{p.error}",
                  f"inspect it (`ps -o args= -p {p.pid}`); stop it if it should not run",
                  "info")


# -- 1. keys ---------------------------------------------------------------------------


def check_key_types(c: Census, a: AccountSnapshot) -> None:
    for name, key, actual in a.wrong_types:
        c.add("wrong_key_type", a.account, f"key {key} ({name}) is a {actual}",
              "the gate fails closed on it; inspect with redis-cli TYPE/DUMP, fix or delete the "
              "key while the account is halted (`guardrails kill`)")


# -- 2. the lease: who may trade now ---------------------------------------------------


def check_lease(c: Census, a: AccountSnapshot) -> tuple[int | None, str | None]:
    """The lease's (token, holder), after reporting what is wrong with it."""
    account, value, fence = a.account, a.lease_value, a.fence
    token: int | None = None
    holder: str | None = None
    if value is not None:
        tok, sep, who = value.partition(":")
        token, holder = (as_int(tok), who) if sep else (None, value)
        if token is None:
            c.add("lease_malformed", account, f"lease value {value!r} is not <token>:<holder>",
                  "kill with --revoke to delete it; the gate refuses every order meanwhile")
        if a.lease_pttl_ms == -1:
            c.add("lease_without_ttl", account, f"lease {value!r} has no expiry",
                  "a crashed holder would keep the account forever: "
                  f"`guardrails kill --account {account} --revoke`, then resume")
        if token is not None and (fence is None or token > fence):
            c.add("fence_behind_lease", account,
                  f"lease token {token} is above the fencing counter ({fence})",
                  "the counter went backwards (Redis restored without AOF?); stop every "
                  "instance, SET the fence above the highest token ever used, restart")
    c.leases[account] = {"holder": holder, "token": token,
                         "ttl_ms": a.lease_pttl_ms if value is not None else None, "fence": fence}
    return token, holder


# -- 3. the registry -------------------------------------------------------------------


def check_registry(c: Census, a: AccountSnapshot, now_ms: int, stale_after: int) -> list[Instance]:
    """The registry's live rows as instances, after reporting bad, expired and silent rows.

    A row is stale once it has been silent for half the TTL its instance gave it (a
    standby beats slowly and gives its record a longer TTL), and never before
    ``stale_after``. A TTL that could not be read leaves ``stale_after`` alone.
    """
    account = a.account
    keys = AccountKeys(AccountId.parse(account))
    for key, kind in a.bad_heartbeat_keys:
        c.add("wrong_key_type", account, f"key {key} (instance) is a {kind} "
              "(expected hash)", "delete it; the instance re-registers on its next "
              "heartbeat")
    for mid, seen in a.expired:
        c.add("stale_registration", account,
              f"instance {mid} is in the registry index but its heartbeat expired "
              f"(last seen {(now_ms - seen) // 1000}s ago)",
              "if it crashed, nothing to do for trading; remove the row with "
              f"`redis-cli ZREM {keys.instances} {mid}`", "warning")
    instances: list[Instance] = []
    for row in a.rows:
        r = row.fields
        inst = Instance(
            account=account, host=r.get("host", "?"), pid=as_int(r.get("pid")), id=r.get("id"),
            role=r.get("role"), token=as_int(r.get("token")),
            standby_flag=r.get("standby_flag") in ("1", "true", "True"),
            config_digest=r.get("config_digest") or None,
            limits_digest=r.get("limits_digest") or None,
            last_seen_ms=as_int(r.get("last_seen_ms")), sources=["registry"],
        )
        if inst.last_seen_ms is not None:
            silent_ms = now_ms - inst.last_seen_ms
            row_ttl = silent_ms + row.ttl_ms if row.ttl_ms is not None else 0
            if silent_ms > max(stale_after, row_ttl // 2):
                c.add("stale_registration", account,
                      f"instance {inst.id} on {inst.host} last heartbeat "
                      f"{silent_ms // 1000}s ago",
                      "check the process (paused? network?); it cannot trade without renewing "
                      "its lease", "warning")
        instances.append(inst)
    return instances


# -- 4. the local process table: authoritative for THIS host ---------------------------


def check_processes(c: Census, a: AccountSnapshot, s: Snapshot, procs: list[LocalProcess],
                    instances: list[Instance]) -> None:
    """Unite this host's processes of the account with its registry rows (``instances``
    gains the processes that never registered)."""
    account, host = a.account, s.host
    for inst in instances:
        if inst.host != host or inst.pid is None:
            continue
        if any(p.pid == inst.pid for p in procs):
            inst.sources.append("process")
        elif inst.pid not in s.live_pids:
            c.add("registered_without_process", account,
                  f"registry row {inst.id} says pid {inst.pid} on {host}, but no such process runs",
                  "the row expires with its heartbeat TTL; if it persists, another host uses "
                  f"the name {host} — give hosts distinct names", "warning")
    for p in procs:
        if any(i.host == host and i.pid == p.pid for i in instances):
            continue
        instances.append(Instance(
            account=account, host=host, pid=p.pid, standby_flag=p.standby,
            config_digest=p.config_digest, limits_digest=p.limits_digest, sources=["process"]))
        c.add("unregistered_process", account,
              f"pid {p.pid} on {host} runs `guardrails run` for {account} but is not in the "
              "registry (not yet started, paused, or cut off from this Redis)",
              f"find out what it is (`ps -o pid,lstart,args -p {p.pid}`); if it should not run, "
              f"stop it (`kill {p.pid}`); it cannot trade without the lease")


def check_other_redis(c: Census, account: str, s: Snapshot) -> None:
    """A process on this host runs the account against another Redis: its lease, limits
    and daily loss live there, so the two copies never see each other — the incident of
    two bots on one wallet with limits silently doubled. Only this host's process table
    shows it (another host's copy shows at the venue: foreign activity)."""
    for p in s.processes:
        if p.account != account or p.pid in s.ours or p.redis_target is None:
            continue
        c.add("account_on_other_redis", account,
              f"pid {p.pid} on {s.host} runs `guardrails run` for {account} against another "
              f"Redis ({connect.describe(p.redis_target)}): a second lease domain with its own "
              "lease, positions and limits",
              f"if it trades the same venue account, stop it (`kill {p.pid}`) now; if it is a "
              "deliberate separate deployment, give it a distinct account id")


# -- 5. the lease holder, and who thinks it is active -----------------------------------


def check_holder_and_active(c: Census, a: AccountSnapshot, instances: list[Instance],
                            lease_token: int | None, lease_holder: str | None) -> None:
    account = a.account
    if lease_holder is not None:
        holder_rows = [i for i in instances if i.id == lease_holder]
        if holder_rows:
            holder_rows[0].sources.append("lease")
        else:
            c.add("lease_holder_unregistered", account,
                  f"lease token {lease_token} is held by {lease_holder!r}, which is not in the "
                  "registry",
                  "an unregistered process holds the lease: find it (doctor on each host); "
                  f"to stop it at once `guardrails kill --account {account} --revoke`")
    active = [i for i in instances if i.role == "active"]
    if len(active) > 1:
        who = ", ".join(f"{i.id}@{i.host} token={i.token}" for i in active)
        c.add("multiple_active", account, f"{len(active)} instances claim to be active: {who}",
              "only the lease holder's orders are admitted, but the others are confused: "
              "restart every instance that does not hold the current token")
    for i in active:
        if lease_token is not None and i.token is not None and i.token != lease_token \
                and len(active) == 1:
            c.add("active_with_stale_token", account,
                  f"{i.id}@{i.host} says active with token {i.token}; the lease has {lease_token}",
                  "it should step down by itself; if it persists, restart it")


# -- 6. copies per host -----------------------------------------------------------------


def check_copies_per_host(c: Census, account: str, instances: list[Instance],
                          want: ManifestAccount | None) -> dict[str, list[Instance]]:
    """The instances grouped by host, after reporting hosts with undeclared extra copies."""
    per_host: dict[str, list[Instance]] = defaultdict(list)
    for i in instances:
        per_host[i.host].append(i)
    limit = want.max_per_host if want else 1
    for h, group in sorted(per_host.items()):
        plain = [i for i in group if not i.standby_flag]
        if len(group) > limit and len(plain) > 1:
            pids = ", ".join(str(i.pid) for i in group)
            c.add("duplicate_on_host", account,
                  f"{len(group)} copies on {h} (pids {pids}), {len(plain)} without --standby",
                  "stop the extra copies; a deliberate extra copy must be started with --standby")
    return per_host


# -- 7. limits and config must agree ----------------------------------------------------


def check_digests(c: Census, account: str, instances: list[Instance]) -> None:
    for attr, code, what in (("limits_digest", "limits_mismatch", "limits"),
                             ("config_digest", "config_mismatch", "configs")):
        digests = {getattr(i, attr) for i in instances if getattr(i, attr)}
        if len(digests) > 1:
            detail = "; ".join(f"{i.id or 'pid ' + str(i.pid)}@{i.host}={getattr(i, attr)}"
                               for i in instances if getattr(i, attr))
            c.add(code, account, f"instances run with different {what}: {detail}",
                  "deploy one config to every host (`guardrails limits show` names the account's "
                  "stored limits), then restart the instances that differ")


# -- 8. the manifest --------------------------------------------------------------------


def check_manifest(c: Census, account: str, instances: list[Instance],
                   per_host: dict[str, list[Instance]], want: ManifestAccount | None) -> None:
    n = len(instances)
    if want is None:
        if n:
            c.add("unexpected_account", account,
                  f"{n} instance(s) run for {account}, which is not in the manifest",
                  "stop them, or add the account to the manifest")
        return
    if n < want.instances:
        c.add("missing_instances", account,
              f"{n} of {want.instances} instance(s) running"
              + (f" (expected on {', '.join(want.hosts)})" if want.hosts else ""),
              "start the missing ones via the supervisor "
              "(`systemctl start guardrails@<name>`, docs/operations.md)")
    elif n > want.instances:
        c.add("unexpected_instances", account,
              f"{n} instance(s) running, the manifest says {want.instances}",
              "stop the extra copies (doctor lists them by host and pid)")
    if want.hosts:
        for h in sorted(per_host):
            if h not in want.hosts:
                c.add("unexpected_host", account,
                      f"{len(per_host[h])} instance(s) on {h}, not in the manifest's hosts",
                      f"stop them on {h}, or add {h} to the manifest")
        # With at least one copy per listed host wanted, each host must have one.
        spread = want.instances >= len(want.hosts)
        for h in want.hosts:
            if h not in per_host and spread:
                c.add("missing_on_host", account, f"no instance on {h}",
                      f"start one on {h} via the supervisor")


# -- 9. the fence history ---------------------------------------------------------------


def check_fence_history(c: Census, a: AccountSnapshot) -> None:
    """Did an instance find the account's fence history lost? (guardrails/fencing.py)"""
    alarm, account = a.fence_alarm, a.account
    if alarm is None:
        return
    what = {"history_lost": "the fence counter and its epoch are gone (FLUSHALL or a "
                            "restart without AOF)",
            "epoch_changed": "the fence is another history than the instances saw (an "
                             "older snapshot restored, or another Redis)"}.get(
        alarm.get("reason", ""), alarm.get("reason", "unknown"))
    c.add("fence_history_lost", account,
          f"lost fence history: {what}; instance {alarm.get('by', '?')} had seen token "
          f"{alarm.get('seen_token', '?')} of epoch {alarm.get('seen_epoch') or '-'}, Redis "
          f"now has fence {alarm.get('fence') or 'none'}; no lease is given",
          f"run `guardrails fence recover --account {account}` (add --above N for the "
          "highest token the venue's records show) to re-seed the fence above every token "
          "seen; the next holder reconciles with the venue before trading")


# -- 10. the prune sweep ----------------------------------------------------------------


def check_prune(c: Census, a: AccountSnapshot, instances: list[Instance], now_ms: int) -> None:
    """Did the last sweep fail? Is the active instance's sweep overdue? (guardrails/prune.py)"""
    p, account = a.prune, a.account
    if p is None:
        return
    if p.last_outcome == "failed":
        c.add("prune_failed", account,
              f"the last prune sweep ({p.last_by or '?'}, at {p.last_run_ms} ms) failed: "
              f"{p.last_error or '?'}; nothing is removed that is not archived ({p.archive or '?'})",
              "fix the cause (the archive's directory and file must be this user's, 0700/0600, "
              "with space left); the next sweep retries, or run `guardrails prune --apply`",
              "warning")
    active = [i for i in instances if i.role == "active"]
    if not active or not p.interval_ms:
        return
    since = max(p.last_run_ms or 0, p.scheduled_ms or 0)
    late = now_ms - since
    if since and late > PRUNE_OVERDUE_FACTOR * p.interval_ms:
        skipped = (f"; rounds are being skipped (last at {p.last_skipped_ms} ms): another "
                   f"sweep holds the archive's lock" if p.last_skipped_ms
                   and p.last_skipped_ms > since else "")
        last = "never" if p.last_run_ms is None else f"{late // 1000}s ago"
        c.add("prune_overdue", account,
              f"the prune sweep of active instance {active[0].id or '?'} last ran {last}, "
              f"every {p.interval_ms // 1000}s expected{skipped}",
              "look for prune.failed / prune.skipped in the active instance's log; a "
              "`guardrails prune` holding the archive's lock, or a stuck sweep", "warning")


# -- 11. fees the ledger could not count -------------------------------------------------


def check_fees_uncounted(c: Census, a: AccountSnapshot) -> None:
    """Were fills applied today without their fee? (``Fill.fees_uncounted``, the day hash's
    ``fees_uncounted``: ccxt with BNB fee payment.) Realized PnL and the daily loss budget
    leave those fees out, so the account can lose more than the budget says."""
    raw, account = a.fees_uncounted, a.account
    if raw is None:
        return
    n = as_int(raw)
    if n is None:
        c.add("fees_uncounted", account,
              f"day:{a.trading_day} fees_uncounted is unreadable ({raw!r}): cannot tell how "
              "many fills today were applied without their fee",
              "repair the field (the journal's fill entries with fees_uncounted say which fills)",
              "warning")
    elif n > 0:
        c.add("fees_uncounted", account,
              f"{n} fill(s) on trading day {a.trading_day} applied without their fee (paid in a "
              "currency the venue could not value in the quote currency, e.g. BNB): realized "
              "PnL and the daily loss budget undercount them",
              "turn BNB fee payment off, or account for these fees by hand (the journal's fill "
              "entries name each currency and amount)", "warning")


# -- 12. persistence ------------------------------------------------------------------


def check_persistence(c: Census, readings: tuple[tuple[str, persistence.Persistence], ...], *,
                      allow_non_durable: bool) -> None:
    """Would this Redis lose the fencing counter on a restart? (guardrails/infra/persistence.py)
    The least durable primary speaks for the deployment."""
    if not readings:
        return
    rank = [persistence.Durability.VOLATILE, persistence.Durability.UNKNOWN,
            persistence.Durability.DURABLE]
    name, found = min(readings, key=lambda r: rank.index(r[1].durability))
    c.persistence = {"durability": found.durability.value, "appendonly": found.aof_enabled,
                     "appendfsync": found.appendfsync, "save": found.save,
                     "risk": found.risk()}
    if name:
        c.persistence["node"] = name
    where = f" node {name}" if name else ""
    durability = found.durability
    if durability is persistence.Durability.VOLATILE:
        c.add("redis_not_durable", None,
              f"Redis{where} would lose the fencing counter on restart ({found.summary()}): "
              f"{found.risk()}",
              "enable AOF (CONFIG SET appendonly yes, appendfsync always, and persist it in "
              "redis.conf); `guardrails run` refuses this Redis unless [redis] "
              "allow_non_durable = true",
              "info" if allow_non_durable else "error")
    elif durability is persistence.Durability.UNKNOWN:
        c.add("redis_persistence_unknown", None,
              f"could not read Redis persistence settings ({found.summary()})",
              "grant the doctor's Redis user `info` (and `config|get`), or check by hand that "
              "appendonly is yes", "info")
