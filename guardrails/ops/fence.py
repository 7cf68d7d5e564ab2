"""``guardrails fence status|recover``: see an account's lost-history alarm, and recover
from it like an operator must (the next holder reconciles before trading).

What the epoch and the alarm mean, and how ``recover`` picks the floor, is
``guardrails/fencing.py``. ``status`` exits 1 while the alarm is set; both exit 2 when
the account or Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from redis.exceptions import RedisError

from guardrails.config import ConfigError
from guardrails.fencing import fence_status, recover
from guardrails.infra import connect
from guardrails.keys import AccountId, AccountKeys, InvalidAccountId
from guardrails.ops.common import load_target


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
        result = await recover(redis, keys, above=args.above, paper_venue=paper)
    except RedisError as e:
        print(f"guardrails fence: Redis at {connect.describe(url)}: {e}", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        found = ", ".join(f"{k}={v}" for k, v in result.sources.items())
        print(f"{result.account}: fence re-seeded at {result.floor} (highest seen: {found}); "
              f"epoch {result.epoch}; alarm cleared — the next holder gets a token above "
              f"{result.floor} and reconciles with the venue before trading")
    return 0


def cmd_fence(args: argparse.Namespace) -> int:
    """``guardrails fence status|recover``."""
    return asyncio.run(_fence(args))
