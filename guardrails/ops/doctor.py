"""``guardrails doctor``: a census of what runs against what should run.

Invariant served: *one writer per account* (DESIGN.md §1) — seen from outside. Count the
processes before you count the rows: liveness is the union of three sources, each
authoritative for what it knows and for nothing else:

- the **Redis registry** (heartbeat hashes + the instances ZSET): which instances claim
  to be alive, where, in which role, with which limits and config digests;
- the **lease** (and the fencing counter): who may actually trade right now;
- the **local process table** (psutil): which ``guardrails run`` processes exist on THIS
  host, whatever they registered — a process that never registered is still running.

It compares them with a manifest (``config/manifest.toml``, ``Manifest`` below) and
reports drift in both directions. Each finding names what is wrong and what to do.
Exit 0 healthy, 1 problems found, 2 could not check (Redis down, bad manifest).
Doctor uses read-only Redis commands only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tomllib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.exceptions import RedisError, ResponseError

from guardrails import redacted
from guardrails.config import (
    EMBEDDED,
    REDIS_URL_ENV,
    Config,
    ConfigError,
    DurationMs,
    format_validation_error,
    load_config,
)
from guardrails.fencing import read_alarm
from guardrails.infra import connect, embedded, persistence
from guardrails.keys import AccountId, AccountKeys, InvalidAccountId
from guardrails.ops import notify
from guardrails.ops.common import load_target
from guardrails.registry import Registry, known_accounts
from guardrails.runtime import localguard

DOCTOR_SCHEMA_VERSION = 1

EXIT_HEALTHY = 0
EXIT_PROBLEMS = 1
EXIT_CANNOT_CHECK = 2

DEFAULT_STALE_AFTER_MS = 10_000


# -- the manifest -------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class ManifestAccount(_Model):
    account: str = Field(description="venue:account, as in the bot config's [account].")
    instances: int = Field(ge=0, description="Copies that should run in total (active + standbys).")
    hosts: list[str] = Field(
        default_factory=list, description="Hosts the copies run on; empty = any host."
    )
    max_per_host: int = Field(
        default=1, ge=1, description="Copies allowed per host; more need the --standby flag."
    )

    @field_validator("account")
    @classmethod
    def _account(cls, v: str) -> str:
        try:
            return str(AccountId.parse(v))
        except InvalidAccountId as e:
            raise ValueError(str(e)) from None

    @property
    def account_id(self) -> AccountId:
        return AccountId.parse(self.account)


class Manifest(_Model):
    """What should run. Accounts not listed here must not run at all."""

    stale_after: DurationMs | None = Field(
        default=None, description="A registry row silent for longer than this is stale (10s)."
    )

    @property
    def stale_after_ms(self) -> int:
        return self.stale_after if self.stale_after is not None else DEFAULT_STALE_AFTER_MS
    accounts: list[ManifestAccount] = Field(default_factory=list, description="Each account.")
    allow_non_durable: bool = Field(
        default=False,
        description="Accept a Redis without AOF (its restart loses the fencing counter): "
        "reported as info instead of a problem. Throwaway setups only.",
    )

    @field_validator("accounts")
    @classmethod
    def _unique(cls, v: list[ManifestAccount]) -> list[ManifestAccount]:
        seen = Counter(a.account for a in v)
        dupes = sorted(a for a, n in seen.items() if n > 1)
        if dupes:
            raise ValueError(f"accounts listed twice: {', '.join(dupes)}")
        return v


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f, parse_float=Decimal)
    except FileNotFoundError:
        raise ConfigError(f"{p}: manifest not found") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{p}: cannot read manifest: {e}") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(str(p), e)) from None


# -- findings -----------------------------------------------------------------------


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


# Documented type of every fixed per-account key (guardrails/keys.py, docs/keys.md).
EXPECTED_TYPES: dict[str, str] = {
    "schema": "string",
    "fence": "string",
    "epoch": "string",
    "fence_alarm": "hash",
    "lease": "string",
    "state": "hash",
    "limits": "hash",
    "positions": "hash",
    "marks": "hash",
    "reservations": "hash",
    "open_orders": "set",
    "intents": "hash",
    "fills": "hash",
    "journal": "stream",
    "throttle": "hash",
    "stats": "hash",
    "denials": "stream",
    "nonce": "string",
    "instances": "zset",
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


# -- source: the local process table ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalProcess:
    pid: int
    cmdline: list[str]
    account: str | None
    redis_target: str | None
    standby: bool
    config_digest: str | None
    limits_digest: str | None
    error: str | None


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


_MODULES = ("guardrails", "guardrails.cli", "guardrails.__main__")


def is_guardrails_run(argv: list[str]) -> bool:
    """True for every launch form of ``guardrails run``: the console script
    (``…/guardrails run``, also behind an interpreter), ``python -m guardrails run``,
    ``python -m guardrails.cli run`` and ``python -m guardrails.__main__ run``."""
    for i, a in enumerate(argv[:-1]):
        base = os.path.basename(a)
        script = base == "guardrails" and (i == 0 or i <= 1)
        module = a in _MODULES and i > 0 and argv[i - 1] == "-m"
        if (script or module) and argv[i + 1] == "run":
            return True
    return False


def local_processes() -> list[LocalProcess]:
    """Every ``guardrails run`` process on this host, with its account and Redis target.

    The account comes from the process's own ``--config`` (resolved in its working
    directory); the Redis target from its ``--redis-url``, ``$GUARDRAILS_REDIS_URL`` or
    the config. A process whose config cannot be read is still reported.
    """
    out: list[LocalProcess] = []
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
            if proc.info["pid"] == me or not is_guardrails_run(argv):
                continue
            cwd = proc.cwd()
            try:
                env_url = proc.environ().get(REDIS_URL_ENV)
            except (psutil.AccessDenied, psutil.ZombieProcess):
                env_url = None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        cfg_path = Path(_flag(argv, "--config") or "config/paper.toml")
        if not cfg_path.is_absolute():
            cfg_path = Path(cwd) / cfg_path
        url = _flag(argv, "--redis-url") or env_url
        account = config_digest = limits_digest = error = None
        try:
            cfg = load_config(cfg_path, url)
            account = str(cfg.account_id)
            url = cfg.redis.url
            config_digest = cfg.digest()
            limits_digest = cfg.risk.digest()
        except ConfigError as e:
            error = str(e).splitlines()[0]
        out.append(
            LocalProcess(
                pid=int(proc.info["pid"]),
                cmdline=list(argv),
                account=account,
                redis_target=url,
                standby="--standby" in argv,
                config_digest=config_digest,
                limits_digest=limits_digest,
                error=error,
            )
        )
    return out


def same_target(a: str | None, b: str | None) -> bool:
    """Whether two Redis URLs name the same server and database, however spelled
    (``LOCALHOST``, a trailing slash, ``?db=0``, a default port; 'embedded' resolved):
    the one normalisation the host lock uses (``localguard.normalise_redis_target``)."""
    def norm(u: str | None) -> str | None:
        if u is None:
            return None
        if u == EMBEDDED:
            u = embedded.paths().url
        try:
            return localguard.normalise_redis_target(u)
        except ValueError:
            return u.strip()

    return a is not None and norm(a) == norm(b)


# -- source: Redis --------------------------------------------------------------------


def _int(v: object) -> int | None:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return None


async def _registry(
    redis: aioredis.Redis, keys: AccountKeys
) -> tuple[list[dict[str, str]], list[tuple[str, int]]]:
    """(live heartbeat rows as strings, (id, last_seen_ms) of rows whose heartbeat expired)."""
    rows: list[dict[str, str]] = []
    gone: list[tuple[str, int]] = []
    if (await redis.type(keys.instances)) not in ("zset", "none"):
        return rows, gone  # reported as wrong_key_type
    for row in await Registry.list_instances(redis, keys, include_expired=True):
        if row.get("expired"):
            gone.append((str(row["id"]), int(str(row.get("last_seen_ms") or 0))))
        else:
            rows.append({k: "" if v is None else str(v) for k, v in row.items()})
    return rows, gone


async def _key_types(redis: aioredis.Redis, keys: AccountKeys) -> list[tuple[str, str, str]]:
    """(name, key, actual) for every documented key whose TYPE is not the documented one."""
    wrong: list[tuple[str, str, str]] = []
    for name, expected in EXPECTED_TYPES.items():
        key = getattr(keys, name)
        actual = str(await redis.type(key))
        if actual not in ("none", expected):
            wrong.append((name, key, f"{actual} (expected {expected})"))
    return wrong


# -- the census -----------------------------------------------------------------------


@dataclass(slots=True)
class Census:
    findings: list[Finding] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    persistence: dict[str, Any] = field(default_factory=dict)

    def add(self, code: str, account: str | None, message: str, action: str,
            severity: str = "error") -> None:
        self.findings.append(Finding(code, account, message, action, severity))


async def census(
    redis: aioredis.Redis,
    redis_target: str,
    manifest: Manifest | None,
    *,
    host: str | None = None,
    processes: list[LocalProcess] | None = None,
) -> Census:
    """Gather every source and compare. Redis connection errors propagate (exit 2)."""
    host = host or socket.gethostname()
    procs = local_processes() if processes is None else processes
    sec, usec = await redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    stale_after = manifest.stale_after_ms if manifest else DEFAULT_STALE_AFTER_MS
    c = Census()

    ours = [p for p in procs if same_target(p.redis_target, redis_target)]
    for p in procs:
        if p.error and (p.redis_target is None or same_target(p.redis_target, redis_target)):
            c.add("unidentified_process", None,
                  f"pid {p.pid} on {host} runs `guardrails run` but its config is unreadable: "
                  f"{p.error}",
                  f"inspect it (`ps -o args= -p {p.pid}`); stop it if it should not run",
                  "info")

    accounts: set[str] = {str(a) for a in await known_accounts(redis)}
    accounts |= {p.account for p in ours if p.account}
    if manifest:
        accounts |= {a.account for a in manifest.accounts}
    wanted = {a.account: a for a in manifest.accounts} if manifest else {}

    for account in sorted(accounts):
        keys = AccountKeys(AccountId.parse(account))
        await _check_account(c, redis, keys, account, host, now_ms, stale_after,
                             [p for p in ours if p.account == account], wanted.get(account),
                             manifest is not None)
        await check_fence_history(c, redis, keys, account)
    await check_persistence(c, redis, allow_non_durable=bool(manifest and
                                                             manifest.allow_non_durable))
    return c


async def check_fence_history(c: Census, redis: aioredis.Redis, keys: AccountKeys,
                              account: str) -> None:
    """Did an instance find the account's fence history lost? (guardrails/fencing.py)"""
    alarm = await read_alarm(redis, keys)
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


async def check_persistence(c: Census, redis: aioredis.Redis, *, allow_non_durable: bool) -> None:
    """Would this Redis lose the fencing counter on a restart? (guardrails/persistence.py)"""
    async with connect.primaries(redis) as nodes:
        readings = [(name, await persistence.read(node)) for name, node in nodes]
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


async def _check_account(
    c: Census,
    redis: aioredis.Redis,
    keys: AccountKeys,
    account: str,
    host: str,
    now_ms: int,
    stale_after: int,
    procs: list[LocalProcess],
    want: ManifestAccount | None,
    have_manifest: bool,
) -> None:
    # 1. Keys of the wrong type make every other reading suspect: report them first.
    for name, key, actual in await _key_types(redis, keys):
        c.add("wrong_key_type", account, f"key {key} ({name}) is a {actual}",
              "the gate fails closed on it; inspect with redis-cli TYPE/DUMP, fix or delete the "
              "key while the account is halted (`guardrails kill`)")
    # 2. The lease: who may trade now.
    lease_val = await redis.get(keys.lease) if (await redis.type(keys.lease)) == "string" else None
    pttl = await redis.pttl(keys.lease)
    fence_ok = (await redis.type(keys.fence)) == "string"
    fence = _int(await redis.get(keys.fence)) if fence_ok else None
    lease_token: int | None = None
    lease_holder: str | None = None
    if lease_val is not None:
        tok, sep, who = str(lease_val).partition(":")
        lease_token, lease_holder = (_int(tok), who) if sep else (None, str(lease_val))
        if lease_token is None:
            c.add("lease_malformed", account, f"lease value {lease_val!r} is not <token>:<holder>",
                  "kill with --revoke to delete it; the gate refuses every order meanwhile")
        if int(pttl) == -1:
            c.add("lease_without_ttl", account, f"lease {lease_val!r} has no expiry",
                  "a crashed holder would keep the account forever: "
                  f"`guardrails kill --account {account} --revoke`, then resume")
        if lease_token is not None and (fence is None or lease_token > fence):
            c.add("fence_behind_lease", account,
                  f"lease token {lease_token} is above the fencing counter ({fence})",
                  "the counter went backwards (Redis restored without AOF?); stop every "
                  "instance, SET the fence above the highest token ever used, restart")
    c.leases[account] = {"holder": lease_holder, "token": lease_token,
                         "ttl_ms": int(pttl) if lease_val is not None else None, "fence": fence}

    # 3. The registry.
    try:
        rows, gone = await _registry(redis, keys)
    except ResponseError:  # a heartbeat key of the wrong type: name each one
        rows, gone = [], []
        for member in await redis.zrange(keys.instances, 0, -1):
            key = keys.instance(str(member))
            kind = str(await redis.type(key))
            if kind not in ("hash", "none"):
                c.add("wrong_key_type", account, f"key {key} (instance) is a {kind} "
                      "(expected hash)", "delete it; the instance re-registers on its next "
                      "heartbeat")
    for mid, seen in gone:
        c.add("stale_registration", account,
              f"instance {mid} is in the registry index but its heartbeat expired "
              f"(last seen {(now_ms - seen) // 1000}s ago)",
              "if it crashed, nothing to do for trading; remove the row with "
              f"`redis-cli ZREM {keys.instances} {mid}`", "warning")
    # A row is stale once it has been silent for half the TTL its instance gave it (a
    # standby beats slowly and gives its record a longer TTL), and never before
    # stale_after. A failed TTL read leaves stale_after alone.
    async with redis.pipeline(transaction=False) as pipe:
        for r in rows:
            pipe.pttl(keys.instance(r.get("id", "")))
        ttls = await pipe.execute(raise_on_error=False) if rows else []
    instances: list[Instance] = []
    for r, ttl in zip(rows, ttls, strict=True):
        inst = Instance(
            account=account, host=r.get("host", "?"), pid=_int(r.get("pid")), id=r.get("id"),
            role=r.get("role"), token=_int(r.get("token")),
            standby_flag=r.get("standby_flag") in ("1", "true", "True"),
            config_digest=r.get("config_digest") or None,
            limits_digest=r.get("limits_digest") or None,
            last_seen_ms=_int(r.get("last_seen_ms")), sources=["registry"],
        )
        stale = False
        if inst.last_seen_ms is not None:
            silent_ms = now_ms - inst.last_seen_ms
            row_ttl = silent_ms + ttl if isinstance(ttl, int) and ttl > 0 else 0
            stale = silent_ms > max(stale_after, row_ttl // 2)
        if stale and inst.last_seen_ms is not None:
            c.add("stale_registration", account,
                  f"instance {inst.id} on {inst.host} last heartbeat "
                  f"{(now_ms - inst.last_seen_ms) // 1000}s ago",
                  "check the process (paused? network?); it cannot trade without renewing "
                  "its lease", "warning")
        instances.append(inst)

    # 4. The local process table: authoritative for THIS host.
    for inst in instances:
        if inst.host != host or inst.pid is None:
            continue
        match = [p for p in procs if p.pid == inst.pid]
        if match:
            inst.sources.append("process")
        elif not psutil.pid_exists(inst.pid):
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

    # 5. The lease holder must be a known instance, and only it may think it is active.
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

    # 6. Copies per host.
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

    # 7. Limits and config must agree.
    for attr, code, what in (("limits_digest", "limits_mismatch", "limits"),
                             ("config_digest", "config_mismatch", "configs")):
        digests = {getattr(i, attr) for i in instances if getattr(i, attr)}
        if len(digests) > 1:
            detail = "; ".join(f"{i.id or 'pid ' + str(i.pid)}@{i.host}={getattr(i, attr)}"
                               for i in instances if getattr(i, attr))
            c.add(code, account, f"instances run with different {what}: {detail}",
                  "deploy one config to every host (`guardrails limits show` names the account's "
                  "stored limits), then restart the instances that differ")

    # 8. The manifest.
    if have_manifest:
        n = len(instances)
        if want is None:
            if n:
                c.add("unexpected_account", account,
                      f"{n} instance(s) run for {account}, which is not in the manifest",
                      "stop them, or add the account to the manifest")
        else:
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
    c.instances.extend(instances)


# -- CLI ------------------------------------------------------------------------------


def exit_code(c: Census) -> int:
    return EXIT_PROBLEMS if any(f.problem for f in c.findings) else EXIT_HEALTHY


def report_json(c: Census, redis_target: str, manifest_path: str | None) -> dict[str, Any]:
    return {
        "schema_version": DOCTOR_SCHEMA_VERSION,
        "healthy": exit_code(c) == EXIT_HEALTHY,
        "exit_code": exit_code(c),
        "host": socket.gethostname(),
        "redis": connect.describe(redis_target),
        "manifest": manifest_path,
        "findings": [f.to_json() for f in c.findings],
        "instances": [i.to_json() for i in c.instances],
        "leases": c.leases,
        "persistence": c.persistence,
    }


def _cannot_check(as_json: bool, why: str, manifest_path: str | None) -> int:
    why = redacted.mask_text(why)  # it may quote the Redis URL or a driver's message
    if as_json:
        print(json.dumps({
            "schema_version": DOCTOR_SCHEMA_VERSION, "healthy": False,
            "exit_code": EXIT_CANNOT_CHECK, "host": socket.gethostname(), "redis": None,
            "manifest": manifest_path, "error": why, "findings": [], "instances": [],
            "leases": {},
        }, indent=2))
    print(f"guardrails doctor: could not check: {why}", file=sys.stderr)
    return EXIT_CANNOT_CHECK


async def _doctor(args: argparse.Namespace) -> int:
    manifest_path: str | None = args.manifest
    try:
        manifest = load_manifest(args.manifest) if args.manifest else None
        url, cfg = load_target(args)
        channels = _channels(args, cfg)
    except ConfigError as e:
        return _cannot_check(args.json, str(e), manifest_path)
    try:
        redis = await connect.connect(url)
    except Exception as e:  # embedded Redis that cannot start, bad URL
        return _cannot_check(args.json, f"{connect.describe(url)}: {e}", manifest_path)
    try:
        concrete = await connect.resolve_url(url)
        result = await census(redis, concrete, manifest)
    except RedisError as e:
        return _cannot_check(args.json, f"Redis at {connect.describe(url)}: {e}", manifest_path)
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps(report_json(result, url, manifest_path), indent=2))
    else:
        for inst in result.instances:
            print(f"instance {inst.account} {inst.id or '-'} host={inst.host} pid={inst.pid} "
                  f"role={inst.role or '-'} token={inst.token} seen by {'+'.join(inst.sources)}")
        for f in result.findings:
            print(f"{f.severity.upper()} [{f.code}] {f.account or ''}: {f.message}\n"
                  f"    what to do: {f.action}")
        problems = sum(f.problem for f in result.findings)
        print(f"{problems} problem(s)" if problems else "healthy")
    if channels:
        await _notify(channels, result, url)
    return exit_code(result)


def _channels(args: argparse.Namespace, cfg: Config | None) -> list[notify.Channel]:
    """``--notify``: the config's ``[[notify]]`` channels that take ``doctor`` alerts."""
    if not getattr(args, "notify", False):
        return []
    if cfg is None or not cfg.notify:
        raise ConfigError("doctor --notify: no [[notify]] entries (it sends through the "
                          "config's channels; pass --config)")
    try:
        chans = notify.channels_from_config(cfg.notify)
    except ValueError as e:
        raise ConfigError(f"{cfg.source}: {e}") from None
    wanted = [c for c in chans if "doctor" in c.events]
    if not wanted:
        raise ConfigError(f"{cfg.source}: no [[notify]] entry lists the 'doctor' event")
    return wanted


async def _notify(channels: list[notify.Channel], result: Census, url: str) -> None:
    """Send the problems (not info findings) as one ``doctor`` alert; a healthy census
    sends nothing (cron runs this every few minutes). Bounded: 15 s at most."""
    problems = [f for f in result.findings if f.problem]
    if not problems:
        return
    text = f"doctor: {len(problems)} problem(s) on {connect.describe(url)}: " + "; ".join(
        f"[{f.code}] {f.account or ''} {f.message}" for f in problems[:5])
    n = notify.Notifier(channels, max_attempts=3, backoff_s=0.5)
    n.publish(notify.Alert("doctor", ",".join(sorted({f.account or "-" for f in problems})),
                           text, {"problems": str(len(problems))}))
    task = asyncio.create_task(n.run())
    try:
        if not await n.drain(15.0):
            print("warning: doctor --notify: the alert was not delivered within 15 s",
                  file=sys.stderr)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def cmd_doctor(args: argparse.Namespace) -> int:
    return asyncio.run(_doctor(args))
