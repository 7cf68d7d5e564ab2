"""``guardrails migrate``: move an account's keys from schema version 1 to 2.

Version 2 (``keys.SCHEMA_VERSION``) adds the prune sweep's keys (``tomb``, ``prune``)
and changes no existing key: the migration only moves the account's ``schema`` key from
``1`` to ``2``. It matters because of what the number guards: a version-1 gate does not
read the tombstones and would re-admit a pruned intent, so once an account may be pruned
every instance must speak version 2 — and a version-2 instance refuses a version-1
account (``limits`` reports the stored schema), so nothing is pruned before the move.

Dry run by default: it prints what it would do and changes nothing. ``--apply`` moves
the version, and refuses (exit 1, naming them) while any instance of the account is live
in the registry or the lease is held: stop every instance (they are the old version),
migrate, then start the new version. The move itself is one ``WATCH``/``MULTI`` on the
schema and lease keys, so an instance that starts meanwhile makes it fail (exit 1), not
half-apply. Exit 0: migrated, already current, or a clean dry run; 2: cannot start (bad
config, unknown stored version, Redis unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from guardrails.config import ConfigError
from guardrails.infra import connect
from guardrails.keys import SCHEMA_PREVIOUS, SCHEMA_VERSION, AccountKeys
from guardrails.model import TERMINAL_STATES
from guardrails.ops.common import load_target, target_account
from guardrails.registry import Registry

_TERMINAL = frozenset(s.value for s in TERMINAL_STATES)


@dataclass(slots=True)
class MigrationPlan:
    account: str
    stored: str | None
    """The stored schema version (None: a new account, nothing to migrate)."""
    target: int = SCHEMA_VERSION
    action: str = ""
    """``migrate`` | ``current`` | ``new_account`` | ``refused``."""
    live: list[str] = field(default_factory=list)
    """Live instance ids (and ``lease:<holder>``) that block ``--apply``."""
    orders: int = 0
    terminal_orders: int = 0
    """What the first sweep may prune (those older than the retention window)."""
    applied: bool = False
    detail: str = ""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def plan(redis: aioredis.Redis, keys: AccountKeys) -> MigrationPlan:
    """What ``migrate`` would do for ``keys``' account (reads only)."""
    stored_raw = await redis.get(keys.schema)
    p = MigrationPlan(str(keys.account), None if stored_raw is None else _s(stored_raw))
    for row in await Registry.list_instances(redis, keys):
        p.live.append(str(row.get("id")))
    lease = await redis.get(keys.lease)
    if lease is not None:
        p.live.append(f"lease:{_s(lease).partition(':')[2]}")
    async for name in redis.scan_iter(match=keys.order("*"), count=500):
        p.orders += 1
        st = await redis.hget(name, "state")
        if st is not None and _s(st) in _TERMINAL:
            p.terminal_orders += 1
    if p.stored is None:
        p.action, p.detail = "new_account", "no keys yet: a new account starts at version " \
            f"{SCHEMA_VERSION}"
    elif p.stored == str(SCHEMA_VERSION):
        p.action, p.detail = "current", f"already at version {SCHEMA_VERSION}"
    elif p.stored == str(SCHEMA_PREVIOUS):
        p.action = "migrate"
        p.detail = (f"schema {SCHEMA_PREVIOUS} -> {SCHEMA_VERSION}: no existing key changes; "
                    f"afterwards the active instance prunes terminal orders older than "
                    f"[prune] retention ({p.terminal_orders} of {p.orders} orders are terminal)")
    else:
        p.action = "refused"
        p.detail = f"stored schema {p.stored!r} is not one this version migrates from"
    return p


async def apply(redis: aioredis.Redis, keys: AccountKeys) -> MigrationPlan:
    """Move the account to ``SCHEMA_VERSION`` if the plan says ``migrate`` and nothing
    is live; the returned plan says what happened (``applied``)."""
    p = await plan(redis, keys)
    if p.action != "migrate":
        return p
    if p.live:
        p.action = "refused"
        p.detail = ("instances are live (" + ", ".join(p.live) + "): stop every instance of "
                    "the account, then migrate")
        return p
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(keys.schema, keys.lease, keys.instances)
            stored = await pipe.get(keys.schema)
            if stored is None or _s(stored) != str(SCHEMA_PREVIOUS) or await pipe.exists(keys.lease):
                raise WatchError("changed")
            pipe.multi()  # type: ignore[no-untyped-call]
            pipe.set(keys.schema, SCHEMA_VERSION)
            await pipe.execute()
        except WatchError:
            p.action = "refused"
            p.detail = "the account changed meanwhile (an instance started?): run it again"
            return p
    p.applied = True
    p.detail = f"migrated: schema {SCHEMA_PREVIOUS} -> {SCHEMA_VERSION}"
    return p


def cmd_migrate(args: argparse.Namespace) -> int:
    """``guardrails migrate [--apply] [--json]``."""
    return asyncio.run(_migrate(args))


async def _migrate(args: argparse.Namespace) -> int:
    try:
        url, _ = load_target(args)
        account = target_account(args, "migrate")
    except ConfigError as e:
        print(f"guardrails migrate: {e}", file=sys.stderr)
        return 2
    if account is None:
        return 2
    keys = AccountKeys(account)
    redis = await connect.connect(url)
    try:
        result = await (apply(redis, keys) if args.apply else plan(redis, keys))
    except RedisError as e:
        print(f"guardrails migrate: Redis at {connect.describe(url)}: {e}", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps({**asdict(result), "dry_run": not args.apply}, indent=2))
    else:
        mode = "" if args.apply else " (dry run: nothing changed; --apply to migrate)"
        print(f"{result.account}: {result.action}: {result.detail}{mode}")
        if result.live and not args.apply and result.action == "migrate":
            print(f"  --apply would refuse now: live {', '.join(result.live)}")
    if result.action == "refused":
        unknown = result.stored not in (None, str(SCHEMA_PREVIOUS), str(SCHEMA_VERSION))
        return 2 if unknown else 1
    return 0
