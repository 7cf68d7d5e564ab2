"""``guardrails fence status|recover``: see an account's lost-history alarm, and recover
from it like an operator must (the next holder reconciles before trading).

What the epoch and the alarm mean, and how ``recover`` picks the floor, is
``guardrails/fencing.py``. With the account's ``--config``, ``recover`` first rebuilds the
ledger from the venue (``reconcile.adopt_venue_history``; ``--venue-orders`` lists the
orders the venue shows; ``--no-venue`` skips it) and exits 1, the alarm still set, when
the venue cannot be read or its records do not add up. ``status`` exits 1 while the
alarm is set; both exit 2 when the account or Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails.config import Config, ConfigError
from guardrails.fencing import FenceRecordError, fence_status, recover
from guardrails.infra import connect
from guardrails.keys import AccountId, AccountKeys, InvalidAccountId
from guardrails.ledger import Ledger
from guardrails.ops.common import load_target
from guardrails.prune import PruneError, default_archive_path
from guardrails.reconcile import AdoptReport, VenueOrderRow, adopt_venue_history, read_venue_orders
from guardrails.statedir import state_dir
from guardrails.venues.base import VenueError


def _archive(cfg: Config | None, keys: AccountKeys) -> Path | None:
    """The prune archive of this host (the config's ``[prune] archive`` or the default),
    if there is one: pruned orders carry tokens too."""
    if cfg is not None and cfg.prune.archive:
        path = Path(cfg.prune.archive)
    else:
        path = default_archive_path(keys, state_dir())
    return path if path.exists() else None


def _s(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _adopt_from_venue(redis: aioredis.Redis, cfg: Config,
                            listed: list[VenueOrderRow]) -> AdoptReport:
    """Rebuild the ledger's record of what the venue knows
    (``reconcile.adopt_venue_history``) while the alarm still stops every instance."""
    from guardrails.venues import make_venue

    venue = make_venue(cfg, redis)
    try:
        await venue.start()
        return await adopt_venue_history(Ledger(redis, AccountKeys(cfg.account_id), cfg.risk),
                                         venue, listed)
    finally:
        await venue.close()


async def _fence(args: argparse.Namespace) -> int:
    try:
        url, cfg = load_target(args)
        if args.account:
            account = AccountId.parse(args.account)
        elif cfg is not None:
            account = cfg.account_id
        else:
            print("guardrails fence: name the account (--account venue:id) or a --config",
                  file=sys.stderr)
            return 2
    except (ConfigError, InvalidAccountId) as e:
        print(f"guardrails fence: {e}", file=sys.stderr)
        return 2
    paper = None
    if cfg is not None and cfg.venue.kind == "paper":
        paper = str(getattr(cfg.venue, "name", "")) or None
    keys = AccountKeys(account)
    redis = await connect.connect(url)
    try:
        if args.fence_command == "status":
            doc = await fence_status(redis, keys)
            alarm = doc["alarm"]
            print(json.dumps(doc, indent=2) if args.json else
                  f"{account}: epoch={doc['epoch'] or '-'} fence={doc['fence']} "
                  + (f"ALARM {alarm.get('reason')} (seen {alarm.get('seen_epoch') or '-'}:"
                     f"{alarm.get('seen_token')}, by {alarm.get('by')})" if alarm else "no alarm"))
            return 1 if alarm else 0
        adopted = None
        if not args.no_venue:
            if cfg is None:
                print("guardrails fence recover: give the account's --config, so the ledger "
                      "is rebuilt from the venue's records first (or --no-venue)", file=sys.stderr)
                return 2
            try:
                listed = read_venue_orders(args.venue_orders) if args.venue_orders else []
            except (OSError, ValueError) as e:
                print(f"guardrails fence recover: --venue-orders: {e}", file=sys.stderr)
                return 2
            adopted = await _adopt_from_venue(redis, cfg, listed)
            if not adopted.ok:
                why = adopted.refused[:3] + adopted.reconciled.failures[:3]
                print(f"guardrails fence recover: the venue's records do not add up in the "
                      f"ledger ({len(adopted.refused)} refused, "
                      f"{len(adopted.reconciled.failures)} not reconciled, e.g. {why}); the "
                      "alarm stays set (safe to run again)", file=sys.stderr)
                return 1
        result = await recover(redis, keys, above=args.above, paper_venue=paper,
                               archive=_archive(cfg, keys))
        latch = {_s(k): _s(v) for k, v in (await redis.hgetall(keys.state)).items()}
    except FenceRecordError as e:
        print(f"guardrails fence: {e}; nothing written (repair the record, then run again)",
              file=sys.stderr)
        return 1
    except PruneError as e:  # the prune archive (pruned orders' tokens) cannot be trusted
        print(f"guardrails fence recover: {e}; the fence was not re-seeded (repair or move "
              "the archive, then run again)", file=sys.stderr)
        return 1
    except VenueError as e:
        print(f"guardrails fence recover: the venue cannot be read ({e}); the alarm stays set "
              "(--no-venue re-seeds without rebuilding the ledger)", file=sys.stderr)
        return 1
    except RedisError as e:
        print(f"guardrails fence: Redis at {connect.describe(url)}: {e}", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()
    venue_doc = None if adopted is None else {
        "venue_fills": adopted.venue_fills, "adopted_orders": adopted.adopted_orders,
        "fills_applied": adopted.fills_applied, "reconciled": adopted.reconciled.checked}
    halted = latch.get("state") in ("HALTED", "REDUCING")
    if args.json:
        print(json.dumps({**result.to_json(), "venue": venue_doc,
                          "trading_state": latch.get("state", "ACTIVE"),
                          "trading_reason": latch.get("reason", "")}, indent=2))
    else:
        if venue_doc is not None:
            print(f"{result.account}: ledger rebuilt from the venue: {venue_doc['venue_fills']} "
                  f"fill(s) read, {venue_doc['adopted_orders']} order(s) adopted, "
                  f"{venue_doc['fills_applied']} fill(s) applied, {venue_doc['reconciled']} "
                  "listed order(s) reconciled")
        found = ", ".join(f"{k}={v}" for k, v in result.sources.items())
        print(f"{result.account}: fence re-seeded at {result.floor} (highest seen: {found}); "
              f"epoch {result.epoch}; alarm cleared — the next holder gets a token above "
              f"{result.floor} and reconciles with the venue before trading")
    if halted:
        # e.g. a fill of a lost order seen as foreign activity before the refusal
        print(f"note: {result.account} is {latch.get('state')} ({latch.get('reason', '')!r}); "
              "`guardrails resume` once the venue's records agree", file=sys.stderr)
    return 0


def cmd_fence(args: argparse.Namespace) -> int:
    """``guardrails fence status|recover``."""
    return asyncio.run(_fence(args))
