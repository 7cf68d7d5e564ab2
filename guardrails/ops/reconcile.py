"""``guardrails reconcile [--fix] [--json]``: catch the ledger up with the venue on demand.

What reconciliation and the sweep do (and what they guarantee) is
``guardrails/reconcile.py``; this runs both once for the config's account against its
venue and reports each transition, held order, failure and sweep finding. Exit 0 when
reconciled and clean (or repaired with ``--fix``), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict

from guardrails.infra import connect
from guardrails.keys import AccountKeys
from guardrails.ledger import Ledger
from guardrails.ops.common import require_config
from guardrails.reconcile import reconcile, sweep
from guardrails.tradingday import wall_clock_ms
from guardrails.venues import make_venue


def cmd_reconcile(args: argparse.Namespace) -> int:
    """``guardrails reconcile [--fix] [--json]``: 0 when reconciled and clean (or fixed)."""
    return asyncio.run(_cmd_reconcile(args))


async def _cmd_reconcile(args: argparse.Namespace) -> int:
    cfg = require_config(args)
    redis = await connect.connect(cfg.redis)
    venue = make_venue(cfg, redis)
    try:
        await venue.start()
        ledger = Ledger(redis, AccountKeys(cfg.account_id), cfg.risk)
        rep = await reconcile(ledger, venue, now_ms=wall_clock_ms())
        sw = await sweep(ledger, venue, fix=bool(args.fix))
    finally:
        await venue.close()
        await redis.aclose()
    if args.json:
        print(json.dumps({"account": str(cfg.account_id), "reconcile": asdict(rep),
                          "ok": rep.ok, "sweep": asdict(sw), "clean": sw.clean}, indent=2))
    else:
        print(f"{cfg.account_id}: reconcile {'ok' if rep.ok else 'FAILED'}: {rep.summary()}")
        for coid, why in rep.failures:
            print(f"  failure {coid}: {why}", file=sys.stderr)
        for coid, a, b in rep.transitions:
            print(f"  {coid}: {a} -> {b}")
        for coid in rep.held:
            print(f"  held {coid}: not at the venue yet, can still arrive")
        verdict = "clean" if sw.clean else ("repaired" if sw.fixed else "NEEDS --fix")
        print(f"{cfg.account_id}: sweep {verdict}")
        for name in ("stranded", "missing_from_index", "terminal_in_index", "dangling_in_index",
                     "reservation_mismatches"):
            for item in getattr(sw, name):
                print(f"  {name}: {item}")
    if not rep.ok:
        return 1
    return 0 if (sw.clean or sw.fixed) else 1
