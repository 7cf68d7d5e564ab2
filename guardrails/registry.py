"""Instance registry: every running instance says, in Redis, who it is and what it runs.

Serves DESIGN.md's "count the processes before you count the rows": each instance
heartbeats a HASH ``keys.instance(id)`` with its host, pid, version, role, token, start
time and the digests of its *effective* config and limits, and the ZSET
``keys.instances`` maps its id to the last heartbeat (Redis server time, ms). The HASH
has a PX expiry of ``heartbeat_ttl``: an instance that stops heartbeating disappears
from the live set on its own; its ZSET row stays (pruned after a day) so ``doctor`` and
``status`` can name instances that went silent. The account string is also added to
``keys.ACCOUNTS_INDEX`` so ``--all`` tools can find the account.

One script (``lua/registry_heartbeat.lua``) writes the HASH, its expiry and the ZSET row
in one step, stamped with Redis's clock (so rows from different hosts compare): one
round trip per heartbeat (EVALSHA running TIME, HSET, PEXPIRE, ZADD; pruning of old
rows only every ``PRUNE_EVERY`` beats).

What the registry does NOT guarantee: it is a census, not an authority. A row says an
instance was alive at ``last_seen_ms``; a missing row does not prove a process is gone
(Redis may have been unreachable from it). Who may trade is decided by the lease alone.

The runtime beats a standby every ``standby_heartbeat_interval`` (default 15 s) instead of
every ``heartbeat_interval``: five commands per beat inside Redis were most of what an
idle standby cost. Its record then lives ``3 x`` that period (``ttl_ms``), so two lost
beats in a row do not make it vanish; ``doctor`` reads each record's TTL and judges a
row's silence against it (stale after half its TTL, and never before ``stale_after``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis
from redis.client import NEVER_DECODE
from redis.exceptions import ResponseError

from guardrails import __version__, logs, redacted, scripts
from guardrails.config import RuntimeConfig
from guardrails.keys import ACCOUNTS_INDEX, AccountId, AccountKeys, InvalidAccountId

_log = logging.getLogger("guardrails.registry")

KEEP_SILENT_ROWS_MS = 24 * 3600 * 1000
"""ZSET rows of instances silent for longer than this are pruned."""

PRUNE_EVERY = 60
"""Prune on the first heartbeat and every this many after (not on every beat)."""

def _stored_or(value: object, default: object) -> object:
    """``value`` as lib/int.lua's stored integer, or ``default`` when it is not one."""
    if not isinstance(value, str):
        return default
    try:
        return scripts.stored_int(value, "field")
    except ValueError:
        return default


INT_FIELDS = ("pid", "started_at_ms", "last_seen_ms", "standby_flag")
"""Fields ``list_instances`` returns as ``int`` (``token`` too, when set)."""


class Role(StrEnum):
    STANDBY = "standby"
    ACTIVE = "active"
    STOPPING = "stopping"


def new_instance_id(host: str | None = None, pid: int | None = None) -> str:
    """A unique id for this process: ``<host>-<pid>-<random>`` (also its lease holder id)."""
    host = (host or socket.gethostname()).replace(" ", "_") or "host"
    return f"{host}-{pid if pid is not None else os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """What does not change during an instance's life (role and token do)."""

    id: str
    account: str
    """The account identity string, ``venue:account``."""
    host: str
    pid: int
    config_digest: str
    limits_digest: str
    standby_flag: bool
    health_url: str = ""
    cmdline: str = ""
    version: str = __version__
    started_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @classmethod
    def for_this_process(
        cls,
        account: str,
        *,
        config_digest: str,
        limits_digest: str,
        standby_flag: bool,
        health_url: str = "",
        instance_id: str | None = None,
    ) -> InstanceInfo:
        host = socket.gethostname()
        return cls(
            id=instance_id or new_instance_id(host),
            account=account,
            host=host,
            pid=os.getpid(),
            config_digest=config_digest,
            limits_digest=limits_digest,
            standby_flag=standby_flag,
            health_url=health_url,
            # argv may carry a Redis password (--redis-url redis://u:PW@…): recorded masked.
            cmdline=" ".join(redacted.mask_argv(sys.argv)),
        )


class Registry:
    """Heartbeats of one instance. No I/O in the constructor."""

    def __init__(
        self, redis: aioredis.Redis, keys: AccountKeys, info: InstanceInfo, cfg: RuntimeConfig
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.info = info
        self.cfg = cfg
        self._heartbeat = scripts.register(redis, "registry_heartbeat")
        self._beats = 0

    def interval_ms(self, role: Role | str) -> int:
        """How often the runtime heartbeats in ``role``: a standby, slowly."""
        if Role(role) is Role.STANDBY:
            return max(self.cfg.heartbeat_interval, self.cfg.standby_heartbeat_interval)
        return self.cfg.heartbeat_interval

    def ttl_ms(self, role: Role | str) -> int:
        """The record's PX when beating every ``interval_ms(role)``: ``heartbeat_ttl``, or
        three beat periods if that is longer (a slow standby beat)."""
        return max(self.cfg.heartbeat_ttl, 3 * self.interval_ms(role))

    def _fields(self, role: str, token: int | None) -> list[str]:
        i = self.info
        record = {
            "id": i.id,
            "account": i.account,
            "host": i.host,
            "pid": str(i.pid),
            "version": i.version,
            "role": role,
            "token": "" if token is None else str(token),
            "started_at_ms": str(i.started_at_ms),
            "config_digest": i.config_digest,
            "limits_digest": i.limits_digest,
            "standby_flag": "1" if i.standby_flag else "0",
            "health_url": i.health_url,
            "cmdline": i.cmdline,
        }
        return [x for kv in record.items() for x in kv]

    async def heartbeat(self, role: Role | str, token: int | None, *,
                        ttl_ms: int | None = None) -> int:
        """Write this instance's record (expiring after ``ttl_ms``, default
        ``heartbeat_ttl``) and (re-)add the account to ``ACCOUNTS_INDEX``; returns the
        Redis server time (ms) written as ``last_seen_ms``. Raises on Redis errors.

        The index is re-added on *every* beat, not only the first: a deleted or rebuilt
        index (``DEL gr:accounts``, a restore) is whole again within one heartbeat of each
        running instance, so ``kill --all`` cannot miss an account that is trading."""
        role = Role(role)
        args: list[str | int] = [
            self.info.id,
            self.cfg.heartbeat_ttl if ttl_ms is None else ttl_ms,
            KEEP_SILENT_ROWS_MS if self._beats % PRUNE_EVERY == 0 else 0,
            *self._fields(role.value, token),
        ]
        reply = await self._heartbeat(
            keys=[self.keys.instance(self.info.id), self.keys.instances], args=args
        )
        self._beats += 1
        # ACCOUNTS_INDEX is outside the account's hash slot, so it cannot be a KEY of the
        # heartbeat script on Redis Cluster: a separate, idempotent command on every beat.
        await self.redis.sadd(ACCOUNTS_INDEX, self.info.account)
        if not isinstance(reply, list) or len(reply) != 2 or int(reply[0]) != 1:
            raise ResponseError(f"registry_heartbeat returned an unexpected reply: {reply!r}")
        return int(reply[1])

    async def remove(self) -> None:
        """Delete this instance's record and row (a clean exit)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.instance(self.info.id))
            pipe.zrem(self.keys.instances, self.info.id)
            await pipe.execute()

    @staticmethod
    async def list_instances(
        redis: aioredis.Redis, keys: AccountKeys, *, include_expired: bool = False
    ) -> list[dict[str, object]]:
        """Every instance of the account, most recently seen first.

        Live rows carry every heartbeat field (``pid``, ``started_at_ms``,
        ``last_seen_ms``, ``standby_flag`` and a set ``token`` as ``int``; the rest as
        ``str``) and ``expired: False``. With ``include_expired``, instances whose record
        expired are listed too as ``{"id", "last_seen_ms", "expired": True}``.
        """
        rows: list[Any] = list(await redis.zrevrange(keys.instances, 0, -1, withscores=True))
        ids = [_text(row[0]) for row in rows]
        scores = [int(row[1]) for row in rows]
        async with redis.pipeline(transaction=False) as pipe:
            for instance_id in ids:
                pipe.hgetall(keys.instance(instance_id))
            records = await pipe.execute() if ids else []
        out: list[dict[str, object]] = []
        for instance_id, score, raw in zip(ids, scores, records, strict=True):
            if raw:
                record: dict[str, object] = {_text(k): _text(v) for k, v in raw.items()}
                # lib/int.lua's stored integers; a malformed field stays its text (a
                # token: None) rather than becoming a different number
                for name in INT_FIELDS:
                    if name in record:
                        record[name] = _stored_or(record[name], record[name])
                record["token"] = _stored_or(record.get("token"), None)
                record["expired"] = False
                out.append(record)
            elif include_expired:
                out.append({"id": instance_id, "last_seen_ms": score, "expired": True})
        return out


@dataclass(frozen=True, slots=True)
class AccountIndex:
    """``ACCOUNTS_INDEX`` as read: the account ids, and the members that are not one."""

    accounts: list[AccountId]
    bad: list[str]
    """Members that are not UTF-8 or not ``venue:account``, escaped (``\\xff``) for
    printing. The set is writable by every bot's ACL role, so one can hold anything."""

    def warning(self) -> str | None:
        """One line naming the bad members, or None when there are none."""
        if not self.bad:
            return None
        return (f"warning: {ACCOUNTS_INDEX} has {len(self.bad)} member(s) that are not "
                f"account ids, skipped: {', '.join(self.bad)} (remove with SREM)")


def _escaped(raw: object) -> str:
    """A member as printable ASCII-safe text: undecodable bytes as ``\\xff``."""
    text = raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    return text[:80]


async def read_account_index(redis: aioredis.Redis) -> AccountIndex:
    """Every member of ``keys.ACCOUNTS_INDEX``, read undecoded so a member that is not
    UTF-8 is reported in ``bad`` instead of failing the whole read."""
    members = await redis.execute_command(  # type: ignore[no-untyped-call]
        "SMEMBERS", ACCOUNTS_INDEX, **{NEVER_DECODE: True})
    accounts: list[AccountId] = []
    bad: list[str] = []
    for raw in sorted(members, key=lambda m: m if isinstance(m, bytes) else str(m).encode()):
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            accounts.append(AccountId.parse(text))
        except (UnicodeDecodeError, InvalidAccountId):
            bad.append(_escaped(raw))
    return AccountIndex(accounts, bad)


async def known_accounts(redis: aioredis.Redis) -> list[AccountId]:
    """Every account in ``keys.ACCOUNTS_INDEX``; members that are not an account id are
    skipped with one warning (``read_account_index`` returns them)."""
    index = await read_account_index(redis)
    if index.bad:
        logs.event(_log, "registry.bad_index_members", logging.WARNING,
                   key=ACCOUNTS_INDEX, members=", ".join(index.bad))
    return index.accounts


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
