"""``guardrails prune --config FILE [--apply] [--json]``: the prune sweep, on demand.

Invariant served: *terminal is terminal, and idempotency survives the prune*
(guardrails/prune.py) — this runs the same ``Pruner.sweep`` the active instance runs
every ``[prune] interval``, with the config's retention, batch and archive, so what it
removes is exactly what the background sweep would have removed, archived first and
tombstoned in the same atomic step.

Dry run by default: it reads the account's orders and fill entries (``SCAN``, ``HMGET``,
``HSCAN``, ``EXISTS``; nothing is written to Redis or to the archive, not even the
lock file) and says what a sweep would archive and remove now: how many orders, intents
and fill entries, the oldest and newest last change among those orders, and a staged
batch of an interrupted sweep waiting to be repaired. ``--apply`` sweeps, with one
progress line on stderr at most every second.

Beside a running instance: every removal is re-checked atomically by the scripts, and
the archive is written only under its ``flock`` (``Archive.try_lock``). ``--apply``
never waits for that lock: when the instance's sweep holds it, the command says so and
exits 1; while the command holds it, the instance's sweep skips its round.

Exit 0: a dry run, or a sweep that finished; 1: the archive's lock is held, or a batch
failed (the error, once; what was removed is in the archive); 2: cannot start (bad
config, account schema not current, an unsafe archive, Redis unreachable). An operator
command never starts an embedded Redis (``connect.connect`` refuses to).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails import redacted
from guardrails.config import Config, ConfigError
from guardrails.infra import connect
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.ops.common import operator_identity, require_config
from guardrails.prune import (
    Archive,
    Progress,
    PruneError,
    Pruner,
    SweepReport,
    candidate_since,
    default_archive_path,
)
from guardrails.statedir import state_dir

PROGRESS_EVERY_S = 1.0
"""At most one progress line per this many seconds (and one at the end)."""


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


@dataclass(slots=True)
class PrunePlan:
    """What a sweep would remove now (read only)."""

    account: str
    archive: str
    cutoff_ms: int
    retention_ms: int
    scanned_orders: int = 0
    orders: int = 0
    """Terminal orders last changed at or before ``cutoff_ms``, not in the open set."""
    intents: int = 0
    """Their intents (those that still name the order)."""
    fills: int = 0
    """Fill entries of those orders, and of orders already gone."""
    oldest_ms: int | None = None
    newest_ms: int | None = None
    """The oldest / newest ``updated_ms`` among ``orders``."""
    staged: int = 0
    """Lines of an interrupted sweep in ``<archive>.pending``, repaired by the next one."""


def archive_path(cfg: Config) -> Path:
    """The archive the active instance of ``cfg`` writes on this host (services.py)."""
    keys = AccountKeys(cfg.account_id)
    return Path(cfg.prune.archive) if cfg.prune.archive else default_archive_path(keys, state_dir())


async def plan(redis: aioredis.Redis, keys: AccountKeys, archive: Archive, *,
               retention_ms: int, scan_count: int = 500) -> PrunePlan:
    """What ``Pruner.sweep`` would archive and remove now (Redis time): reads only."""
    sec, usec = await redis.time()
    now = int(sec) * 1000 + int(usec) // 1000
    p = PrunePlan(str(keys.account), str(archive.path), now - retention_ms, retention_ms)
    prefix = keys.order("")
    chosen: set[str] = set()

    async def page(coids: list[str]) -> None:
        if not coids:
            return
        p.scanned_orders += len(coids)
        async with redis.pipeline(transaction=False) as pipe:
            for c in coids:
                pipe.hmget(keys.order(c), ["state", "updated_ms", "intent_id"])
            heads = await pipe.execute()
        old: list[tuple[str, int, str]] = []
        for c, (st, up, iid) in zip(coids, heads, strict=True):
            since = candidate_since(keys.order(c), st, up, p.cutoff_ms)
            if since is not None and c not in chosen:
                old.append((c, since, "" if iid is None else _s(iid)))
        if not old:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for c, _, iid in old:
                pipe.sismember(keys.open_orders, c)
                pipe.hget(keys.intents, iid or "\x00")
            got = await pipe.execute()
        for (c, up, _), is_open, intent in zip(old, got[0::2], got[1::2], strict=True):
            if is_open:
                continue  # the script keeps it (a terminal record still indexed as open)
            chosen.add(c)
            p.orders += 1
            if intent is not None and _s(intent).startswith(c + "|"):
                p.intents += 1
            p.oldest_ms = up if p.oldest_ms is None else min(p.oldest_ms, up)
            p.newest_ms = up if p.newest_ms is None else max(p.newest_ms, up)

    names: list[str] = []
    async for n in redis.scan_iter(match=prefix + "*", count=scan_count):
        names.append(_s(n)[len(prefix):])
        if len(names) >= scan_count:
            await page(names)
            names = []
    await page(names)
    fills: list[str] = []

    async def fill_page(coids: list[str]) -> None:
        unknown = [c for c in coids if c not in chosen]
        present: list[Any] = []
        if unknown:
            async with redis.pipeline(transaction=False) as pipe:
                for c in unknown:
                    pipe.exists(keys.order(c))
                present = await pipe.execute()
        p.fills += len(coids) - len(unknown) + sum(1 for here in present if not here)

    async for _, c in redis.hscan_iter(keys.fills, count=scan_count):
        fills.append(_s(c))
        if len(fills) >= scan_count:
            await fill_page(fills)
            fills = []
    await fill_page(fills)
    if archive.pending.exists():
        p.staged = len(archive.staged())
    return p


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))


def _progress_printer() -> Progress:
    """Progress lines on stderr, at most one per ``PROGRESS_EVERY_S``."""
    last = [0.0]

    def show(rep: SweepReport) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S:
            return
        last[0] = now
        print(f"guardrails prune: {rep.batches} batch(es): {rep.pruned_orders} orders, "
              f"{rep.pruned_fills} fill entries archived and removed, {rep.kept} kept "
              f"(slowest batch {rep.max_batch_ms:.1f} ms)", file=sys.stderr, flush=True)

    return show


def cmd_prune(args: argparse.Namespace) -> int:
    """``guardrails prune --config FILE [--apply] [--json]``."""
    return asyncio.run(_prune(args))


def _fail(why: str) -> int:
    print(f"guardrails prune: {redacted.mask_text(why)}", file=sys.stderr)
    return 2


async def _prune(args: argparse.Namespace) -> int:
    try:
        cfg = require_config(args)
    except ConfigError as e:
        return _fail(str(e))
    keys = AccountKeys(cfg.account_id)
    archive = Archive(archive_path(cfg))
    redis = await connect.connect(cfg.redis)
    try:
        stored = await redis.get(keys.schema)
        if stored is not None and _s(stored) != str(SCHEMA_VERSION):
            return _fail(f"account {cfg.account_id} is at key schema {_s(stored)}, not "
                         f"{SCHEMA_VERSION}: run `guardrails migrate --apply` first (an "
                         "older gate does not read the tombstones)")
        if not args.apply:
            p = await plan(redis, keys, archive, retention_ms=cfg.prune.retention)
            _show_plan(p, as_json=bool(args.json))
            return 0
        # an unsafe archive directory or lock file is bad input (exit 2), not a failed batch
        held = archive.try_lock()
        if held is not None:
            held.release()
        pruner = Pruner(redis, keys, archive, retention_ms=cfg.prune.retention,
                        batch=cfg.prune.batch, by=operator_identity("guardrails prune"))
        try:
            rep = await pruner.sweep(progress=_progress_printer())
        except PruneError as e:
            print(f"guardrails prune: {cfg.account_id}: {redacted.mask_text(str(e))} (what was "
                  f"removed before is in {archive.path})", file=sys.stderr)
            return 1
    except PruneError as e:  # the archive's directory or lock file is unsafe
        return _fail(str(e))
    except RedisError as e:
        return _fail(f"Redis at {connect.describe(cfg.redis.url)}: {e}")
    finally:
        await redis.aclose()
    if rep.skipped:
        print(f"guardrails prune: {cfg.account_id}: another sweep holds {archive.lock_path} "
              "(the active instance's, or another `guardrails prune`); nothing done, try "
              "again in a moment", file=sys.stderr)
        return 1
    if args.json:
        out = asdict(rep)
        out.pop("pruned")
        print(json.dumps({"account": str(cfg.account_id), "archive": str(archive.path),
                          "dry_run": False, **out}, indent=2))
    else:
        print(f"{cfg.account_id}: archived and removed {rep.pruned_orders} orders, "
              f"{rep.pruned_intents} intents, {rep.pruned_fills} fill entries in "
              f"{rep.batches} batch(es); kept {rep.kept} that changed meanwhile; "
              f"repaired {rep.recovered}; archive {archive.path}")
    return 0


def _show_plan(p: PrunePlan, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**asdict(p), "dry_run": True}, indent=2))
        return
    print(f"{p.account}: would archive and remove {p.orders} terminal orders (of "
          f"{p.scanned_orders}) last changed before {_iso(p.cutoff_ms)}, {p.intents} intents, "
          f"{p.fills} fill entries; oldest {_iso(p.oldest_ms)}, newest {_iso(p.newest_ms)}")
    print(f"  archive {p.archive}" + (f" ({p.staged} staged lines of an interrupted sweep "
                                      "to repair)" if p.staged else ""))
    print("  dry run: nothing changed; --apply to prune")
