"""``guardrails limits show|apply``: the account's stored limits, and changing them
deliberately.

The limits themselves (their encoding, the check every instance makes before it becomes
active, the one transaction that stores them) are ``guardrails/limits.py``; this is the
operator's side: show what is stored beside what the config says, and apply the config's
limits only after showing each difference and a confirmation (``--yes`` for scripts).
The change is recorded with the operator's identity (``ops.common.operator_identity``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from guardrails import scripts
from guardrails.config import RiskConfig
from guardrails.infra import connect
from guardrails.keys import AccountKeys
from guardrails.limits import apply, differences, flatten, stored
from guardrails.ops.common import operator_identity, require_config


def cmd_limits(args: argparse.Namespace) -> int:
    """``guardrails limits show|apply``."""
    return asyncio.run(_cmd_limits(args))


async def _cmd_limits(args: argparse.Namespace) -> int:
    cfg = require_config(args)
    keys = AccountKeys(cfg.account_id)
    redis = await connect.connect(cfg.redis)
    try:
        current = await stored(redis, keys)
        if args.limits_command == "show":
            as_json = getattr(args, "json", False)
            return _show(cfg.risk, current, as_json=as_json, account=str(keys.account))
        if current:
            stored_cfg = json.loads(current.get("config", "{}"))
            diffs = differences(stored_cfg, cfg.risk.model_dump(mode="json"))
            if not diffs:
                print(f"{keys.account}: stored limits equal the configuration; nothing to do")
                return 0
            print(f"{keys.account}: applying these changes:")
            for d in diffs:
                print(f"  {d}")
        if not args.yes:
            if not sys.stdin.isatty():
                print("refusing to apply without --yes (stdin is not a terminal)", file=sys.stderr)
                return 2
            answer = await asyncio.to_thread(input, "apply? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("not applied")
                return 1
        await apply(redis, keys, cfg.risk, operator_identity())
        print(f"{keys.account}: limits applied (digest {cfg.risk.digest()})")
        return 0
    finally:
        await redis.aclose()


def _set_at_ms(v: str | None) -> int | None:
    """The stored ``set_at_ms`` (lib/int.lua's stored integer), None when malformed."""
    try:
        return scripts.stored_nat(v or None, "set_at_ms")
    except ValueError:
        return None


def _show(risk: RiskConfig, current: dict[str, str], *, as_json: bool, account: str) -> int:
    if not current:
        msg = {"account": account, "stored": None}
        print(json.dumps(msg) if as_json else f"{account}: no limits stored yet")
        return 1
    cfg = json.loads(current.get("config", "{}"))
    diffs = differences(cfg, risk.model_dump(mode="json"))
    if as_json:
        print(json.dumps({
            "account": account,
            "stored": cfg,
            "digest": current.get("digest"),
            "set_by": current.get("set_by"),
            "set_at_ms": _set_at_ms(current.get("set_at_ms")),
            "differences_from_config": diffs,
        }, indent=2, sort_keys=True))
        return 0
    print(f"{account}: limits digest {current.get('digest')} set by {current.get('set_by')} "
          f"at {current.get('set_at_ms')} ms")
    for path, value in sorted(flatten(cfg).items()):
        print(f"  {path} = {value}")
    if diffs:
        print("differences from the configuration:")
        for d in diffs:
            print(f"  {d}")
    return 0
