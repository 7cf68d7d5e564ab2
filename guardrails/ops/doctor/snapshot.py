"""The doctor's gather step: one snapshot of everything it judges, and nothing judged.

Three sources, each authoritative for what it knows and for nothing else:

- the **Redis registry** (heartbeat hashes + the instances ZSET, with each record's TTL):
  which instances claim to be alive, where, in which role, with which digests;
- the **lease**, the fencing counter, the fence alarm and the type of every documented
  key: who may trade right now, and whether the account's keys can be trusted;
- the **local process table** (psutil): which ``guardrails run`` processes exist on THIS
  host, whatever they registered — a process that never registered is still running.

Plus the server's persistence settings (one reading per primary), and what the ledger
could not count: today's ``fees_uncounted`` (``day:<today>``, in the account's timezone).
``gather`` reads with read-only commands only (TYPE, GET, HGET, PTTL, HGETALL, ZRANGE,
INFO, CONFIG GET, TIME) and
returns a frozen ``Snapshot``; ``checks.judge`` turns it into findings without I/O, so
every check can be tested on a snapshot built by hand. Redis connection errors
propagate (the command reports "could not check").
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psutil
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from guardrails import scripts
from guardrails.config import REDIS_URL_ENV, ConfigError, load_config
from guardrails.fencing import read_alarm
from guardrails.infra import connect, persistence
from guardrails.keys import AccountId, AccountKeys
from guardrails.prune import PruneTotals, read_totals
from guardrails.registry import Registry, known_accounts
from guardrails.tradingday import trading_day_of

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
    "tombstones": "hash",
    "prune_state": "hash",
}
"""Documented type of every fixed per-account key (guardrails/keys.py, docs/keys.md)."""


# -- the local process table ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalProcess:
    """One ``guardrails run`` process on this host, identified from its own command line,
    working directory and environment (``error``: its config could not be read)."""

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


def _url_of_file(path: str | None, cwd: str) -> str | None:
    """The URL in another run's ``--redis-url-file`` (None when this user cannot read it:
    the run is then reported with the config's or the environment's URL)."""
    if path is None:
        return None
    try:
        return connect.url_from_file(Path(cwd) / path)
    except ConfigError:
        return None


_MODULES = ("guardrails", "guardrails.cli", "guardrails.__main__")


_TAKES_VALUE = ("-X", "-W", "-Q")
"""Interpreter options whose value is the next word (``python -X dev …``)."""


def _interpreter_options(words: list[str]) -> bool:
    """True when ``words`` (what stands between the interpreter and the script) are all
    interpreter options: ``-u``, ``-I``, ``-X dev``, ``-W ignore``..."""
    i = 0
    while i < len(words):
        w = words[i]
        if not w.startswith("-") or w == "-":
            return False
        i += 2 if w in _TAKES_VALUE else 1
    return True


def is_guardrails_run(argv: list[str]) -> bool:
    """True for every launch form of ``guardrails run``: the console script
    (``…/guardrails run``, also behind an interpreter and its options: ``python -u
    …/guardrails run``), ``python -m guardrails run`` (also with options folded into the
    ``-m``: ``python -Im guardrails run``), ``python -m guardrails.cli run`` and
    ``python -m guardrails.__main__ run``."""
    for i, a in enumerate(argv[:-1]):
        if argv[i + 1] != "run":
            continue
        if os.path.basename(a) == "guardrails" and (i == 0 or _interpreter_options(argv[1:i])):
            return True
        if a in _MODULES and i > 0:
            flag = argv[i - 1]
            if flag == "-m" or (flag.startswith("-") and not flag.startswith("--")
                                and flag.endswith("m") and flag[1:].isalpha()):
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
            try:
                cwd = proc.cwd()
            except psutil.AccessDenied:
                # another user's run: its config cannot be found from here, but it is
                # reported (unidentified), never silently left out of the roster
                out.append(LocalProcess(
                    pid=proc.info["pid"], cmdline=argv, account=None, redis_target=None,
                    standby="--standby" in argv, config_digest=None, limits_digest=None,
                    error="its working directory is not readable by this user (run doctor "
                          "as that user or as root to identify it)"))
                continue
            try:
                env_url = proc.environ().get(REDIS_URL_ENV)
            except (psutil.AccessDenied, psutil.ZombieProcess):
                env_url = None
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        cfg_path = Path(_flag(argv, "--config") or "config/paper.toml")
        if not cfg_path.is_absolute():
            cfg_path = Path(cwd) / cfg_path
        url = _flag(argv, "--redis-url") or _url_of_file(_flag(argv, "--redis-url-file"), cwd) \
            or env_url
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


# -- Redis ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegistryRow:
    """A live registry record (every field as a string) and its heartbeat key's PTTL."""

    fields: Mapping[str, str]
    ttl_ms: int | None
    """Remaining TTL of the record; None when it could not be read (or has none)."""


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """What Redis said about one account, read in one pass."""

    account: str
    wrong_types: tuple[tuple[str, str, str], ...] = ()
    """(name, key, "actual (expected X)") of each documented key of another type."""
    lease_value: str | None = None
    """The lease value when the lease is a string key; None when absent (or mistyped)."""
    lease_pttl_ms: int = -2
    """PTTL of the lease key: -2 absent, -1 no expiry."""
    fence: int | None = None
    """The fencing counter, when it is a string key holding an integer."""
    rows: tuple[RegistryRow, ...] = ()
    expired: tuple[tuple[str, int], ...] = ()
    """(id, last_seen_ms) of registry rows whose heartbeat record expired."""
    bad_heartbeat_keys: tuple[tuple[str, str], ...] = ()
    """(key, type) of heartbeat records that are not hashes (the registry could not be read)."""
    fence_alarm: Mapping[str, str] | None = None
    prune: PruneTotals | None = None
    """The prune sweep's totals and last run (None when ``prune_state`` is mistyped)."""
    trading_day: str | None = None
    """Today in the account's stored ``limits`` timezone (None: no limits stored yet)."""
    fees_uncounted: str | None = None
    """The trading day's ``fees_uncounted`` as stored (None: absent, or no trading day)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the checks judge: taken once, at ``now_ms`` (Redis server time)."""

    host: str
    now_ms: int
    redis_target: str
    processes: tuple[LocalProcess, ...] = ()
    """Every ``guardrails run`` process on this host, whatever Redis it uses."""
    ours: frozenset[int] = frozenset()
    """Pids of ``processes`` that use the Redis being checked."""
    live_pids: frozenset[int] = frozenset()
    """Pids registered for this host that exist in its process table."""
    accounts: Mapping[str, AccountSnapshot] = field(default_factory=dict)
    persistence: tuple[tuple[str, persistence.Persistence], ...] = ()
    """(node name, "" for a single server; reading) of each primary."""


def as_int(v: object) -> int | None:
    """``v`` as an int, or None when it is not one (a field of a hand-edited key)."""
    # lib/int.lua's stored integer, not int(): ' 100', '+1', '1_000' are not one
    if v is None:
        return None
    try:
        return scripts.stored_int(str(v), "field")
    except ValueError:
        return None


async def _registry(
    redis: aioredis.Redis, keys: AccountKeys
) -> tuple[list[RegistryRow], list[tuple[str, int]], list[tuple[str, str]]]:
    """(live rows with their TTLs, expired rows, heartbeat keys of the wrong type)."""
    if (await redis.type(keys.instances)) not in ("zset", "none"):
        return [], [], []  # the key itself is reported as a wrong type
    try:
        listed = await Registry.list_instances(redis, keys, include_expired=True)
    except ResponseError:  # a heartbeat key of the wrong type: name each one
        bad = []
        for member in await redis.zrange(keys.instances, 0, -1):
            key = keys.instance(str(member))
            kind = str(await redis.type(key))
            if kind not in ("hash", "none"):
                bad.append((key, kind))
        return [], [], bad
    live: list[dict[str, str]] = []
    gone: list[tuple[str, int]] = []
    for row in listed:
        if row.get("expired"):
            gone.append((str(row["id"]), int(str(row.get("last_seen_ms") or 0))))
        else:
            live.append({k: "" if v is None else str(v) for k, v in row.items()})
    ttls: list[object] = []
    if live:
        async with redis.pipeline(transaction=False) as pipe:
            for r in live:
                pipe.pttl(keys.instance(r.get("id", "")))
            ttls = await pipe.execute(raise_on_error=False)
    rows = [RegistryRow(r, t if isinstance(t, int) and t > 0 else None)
            for r, t in zip(live, ttls, strict=True)]
    return rows, gone, []


async def _fees_uncounted(redis: aioredis.Redis, keys: AccountKeys,
                          now_ms: int) -> tuple[str | None, str | None]:
    """(today in the account's timezone, today's ``fees_uncounted`` as stored): the day is
    the one the ledger's fills count toward (the ``limits`` hash's ``timezone``)."""
    if (await redis.type(keys.limits)) != "hash":
        return None, None
    tz = await redis.hget(keys.limits, "timezone")
    try:
        day = trading_day_of(now_ms, ZoneInfo(str(tz))) if tz else None
    except (ValueError, ZoneInfoNotFoundError):
        return None, None
    if day is None or (await redis.type(keys.day(day))) != "hash":
        return day, None
    raw = await redis.hget(keys.day(day), "fees_uncounted")
    return day, None if raw is None else str(raw)


async def read_account(redis: aioredis.Redis, account: str,
                       now_ms: int | None = None) -> AccountSnapshot:
    """One account's keys, lease, registry, fence alarm, prune record and today's count of
    fills applied without their fee (at ``now_ms``, Redis time; read when None)."""
    keys = AccountKeys(AccountId.parse(account))
    if now_ms is None:
        sec, usec = await redis.time()
        now_ms = int(sec) * 1000 + int(usec) // 1000
    wrong: list[tuple[str, str, str]] = []
    for name, expected in EXPECTED_TYPES.items():
        key = getattr(keys, name)
        actual = str(await redis.type(key))
        if actual not in ("none", expected):
            wrong.append((name, key, f"{actual} (expected {expected})"))
    lease = await redis.get(keys.lease) if (await redis.type(keys.lease)) == "string" else None
    pttl = int(await redis.pttl(keys.lease))
    fence = as_int(await redis.get(keys.fence)) if (await redis.type(keys.fence)) == "string" \
        else None
    rows, gone, bad = await _registry(redis, keys)
    alarm = await read_alarm(redis, keys)
    prune = await read_totals(redis, keys) if (await redis.type(keys.prune_state)) in (
        "hash", "none") else None
    day, uncounted = await _fees_uncounted(redis, keys, now_ms)
    return AccountSnapshot(
        account=account, wrong_types=tuple(wrong),
        lease_value=None if lease is None else str(lease), lease_pttl_ms=pttl, fence=fence,
        rows=tuple(rows), expired=tuple(gone), bad_heartbeat_keys=tuple(bad),
        fence_alarm=alarm, prune=prune, trading_day=day, fees_uncounted=uncounted,
    )


async def read_persistence(redis: aioredis.Redis) -> tuple[tuple[str, persistence.Persistence], ...]:
    """The persistence settings of every primary behind ``redis``."""
    async with connect.primaries(redis) as nodes:
        return tuple([(name, await persistence.read(node)) for name, node in nodes])


async def gather(
    redis: aioredis.Redis,
    redis_target: str,
    also_accounts: Iterable[str] = (),
    *,
    host: str | None = None,
    processes: list[LocalProcess] | None = None,
) -> Snapshot:
    """One snapshot: this host's ``guardrails run`` processes, then every account that is
    indexed in Redis, run by one of them against this Redis, or in ``also_accounts``
    (the manifest's), then the server's persistence."""
    host = host or socket.gethostname()
    procs = local_processes() if processes is None else processes
    sec, usec = await redis.time()
    now_ms = int(sec) * 1000 + int(usec) // 1000
    ours = frozenset(p.pid for p in procs if connect.same_target(p.redis_target, redis_target))
    names = {str(a) for a in await known_accounts(redis)}
    names |= {p.account for p in procs if p.account and p.pid in ours}
    names |= set(also_accounts)
    accounts = {name: await read_account(redis, name, now_ms) for name in sorted(names)}
    registered = {as_int(r.fields.get("pid")) for a in accounts.values() for r in a.rows
                  if r.fields.get("host") == host}
    live = frozenset(p for p in registered if p is not None and psutil.pid_exists(p))
    return Snapshot(host=host, now_ms=now_ms, redis_target=redis_target, processes=tuple(procs),
                    ours=ours, live_pids=live, accounts=accounts,
                    persistence=await read_persistence(redis))
