"""``guardrails run``: one process, the configured strategies, on top of ``Guard``.

The process (1) sets up logging, validates the config and loads every strategy before
touching anything, (2) enters a ``Guard`` (host lock, Redis, venue, registry, the lease
loop, SIGTERM/SIGINT — see ``runtime.guard``), then (3) for every term this instance
leads, runs the strategies under ``StrategySupervisor`` (``runtime.term``) until the
term ends, and (4) exits 0 after a clean stop, 2 when it was refused at start (1 when
no Redis could be reached or started). The event loop is its own so that a strategy
that swallowed its cancellation cannot hang the exit.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

from guardrails import logs
from guardrails.runtime.guard import Guard, GuardError, GuardStopped, TermEnded
from guardrails.runtime.strategy_loader import LoadedStrategy, load_strategies
from guardrails.runtime.term import StrategySupervisor

log = logging.getLogger("guardrails.runtime")

ABANDON_GRACE_S = 0.5


def cmd_run(args: argparse.Namespace) -> int:
    """Entry point of ``guardrails run``. 0 after a clean stop, 2 if it could not start."""
    logs.setup(fmt=getattr(args, "log_format", "kv"))
    guard = Guard.from_config(  # ConfigError -> exit 2 in cli.main
        args.config, redis_url=args.redis_url, standby=args.standby,
        instance_id=args.instance_id, health_port=args.health_port, dashboard=args.dashboard,
    )
    strategies = load_strategies(guard.cfg, source=str(args.config))
    guard.strategies = [s.name for s in strategies]
    return _run_loop(_main(guard, strategies))


async def _main(guard: Guard, strategies: list[LoadedStrategy]) -> int:
    try:
        async with guard:
            await serve(guard, strategies)
    except GuardError as e:
        print(f"guardrails run: {e}", file=sys.stderr)
        return e.exit_code
    return 0


async def serve(guard: Guard, strategies: list[LoadedStrategy]) -> None:
    """Run ``strategies`` in every term ``guard`` leads, until it stops."""
    supervisor = StrategySupervisor(guard.cfg, strategies, crashed=guard.crashed)
    while True:
        try:
            async with guard.term() as term:
                await supervisor.run_term(term)
        except TermEnded:
            continue
        except GuardStopped:
            return


def _run_loop(main: Coroutine[Any, Any, int]) -> int:
    """``asyncio.run(main)``, except that a task that will not end — a strategy that
    swallowed its cancellation and was abandoned — cannot hang the exit: after
    ``ABANDON_GRACE_S`` the process exits anyway (the lease was already released and
    the host lock freed inside ``main``)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # as asyncio.run does (child watchers, get_event_loop)
    try:
        rc = loop.run_until_complete(main)
    finally:
        leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in leftover:
            t.cancel()
        if leftover:
            loop.run_until_complete(asyncio.wait(leftover, timeout=ABANDON_GRACE_S))
        stuck = sorted(t.get_name() for t in leftover if not t.done())
    if stuck:
        logs.event(log, "runtime.exit_abandoning", logging.WARNING, tasks=",".join(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    try:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return rc
