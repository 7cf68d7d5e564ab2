"""``python -m guardrails.chaos --duration S --seed N --instances K --report PATH
[--venue http|ccxt] [--redis single|sentinel]``.

Exit status: 0 when the checker found no violation, 1 when it found any, 2 when the
run could not be set up (bad arguments, a duration too short for every fault kind).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from guardrails.chaos import faults, report
from guardrails.chaos.harness import TTL_S, VENUES, Harness, RunOptions


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m guardrails.chaos",
        description="Fault-injection run with an independent checker (docs/chaos.md).",
    )
    p.add_argument(
        "--duration",
        type=float,
        default=90.0,
        help="seconds of the fault window, counted from when the account trades (default 90)",
    )
    p.add_argument("--seed", type=int, default=None, help="fault schedule seed (default: random)")
    p.add_argument("--instances", type=int, default=3, help="guardrails run processes (>= 3)")
    p.add_argument("--report", default="artifacts/chaos-report.json", help="where to save the JSON report")
    p.add_argument("--workdir", default=None, help="keep logs, Redis data and the venue record here")
    p.add_argument("--schedule-only", action="store_true", help="print the seed's schedule and exit")
    p.add_argument("--venue", choices=VENUES, default="http",
                   help="http: the EIP-712 HTTP venue; ccxt: the ccxt venue (unmodified ccxt "
                   "binance class) on the Binance-protocol simulator")
    p.add_argument("--redis", choices=faults.REDIS_MODES, default="single",
                   help="single: one redis-server behind per-instance proxies (every kind but "
                   "the Sentinel failover); sentinel: primary + replica + three sentinels, "
                   "instances connected through the sentinels (adds sentinel_failover, drops "
                   "the proxy kinds, redis_restart and redis_wipe)")
    return p.parse_args(argv)


async def _run(opts: RunOptions) -> dict[str, Any]:
    """The run, cancelled (so every child is cleaned up) on SIGTERM or SIGINT."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await Harness(opts).run()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    kinds = faults.kinds_for(args.redis)
    if args.schedule_only:
        for f in faults.schedule(seed, args.duration, args.instances, TTL_S, kinds):
            print(f.describe())
        return 0
    if args.instances < 3:
        print("chaos: --instances must be at least 3", file=sys.stderr)
        return 2
    shortest = faults.minimum_duration(TTL_S, kinds)
    if args.duration < shortest:
        print(
            f"chaos: --duration {args.duration}s is too short to inject every fault kind; "
            f"use at least {shortest:.0f}s",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.WARNING)
    keep = args.workdir is not None
    workdir = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="gr-chaos-"))
    opts = RunOptions(
        duration_s=args.duration,
        seed=seed,
        instances=args.instances,
        report_path=Path(args.report),
        workdir=workdir,
        venue=args.venue,
        redis_mode=args.redis,
    )
    try:
        doc = asyncio.run(_run(opts))
    except asyncio.CancelledError:
        print(f"chaos: interrupted; logs kept in {workdir}", file=sys.stderr)
        return 130
    print()
    print(report.render(doc))
    print(f"\nreport saved to {opts.report_path}; replay with --seed {seed}")
    if doc["ok"] and not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not doc["ok"]:
        print(f"logs, Redis data and the venue record kept in {workdir}")
    return 0 if doc["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
