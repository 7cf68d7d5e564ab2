"""A bot with its own loop, put under the harness with ``Guard`` (tests/test_guard_processes.py).

``python -m tests.guard_bot CONFIG INSTANCE_ID [--workers N] [--interval S]``: enters
``Guard.from_config``, then forever: waits in ``guard.active()``, and while active runs
``N`` workers that submit small resting bids (a distinct intent id each) every ``S``
seconds.
Everything it knows it says in its own events (logger ``bot``), next to the runtime's:
``bot.active`` (token), ``bot.decision`` (admitted/denied, token), ``bot.submit_raised``
(a submit that raised instead of returning), ``bot.worker_ended`` (what ended a
worker), ``bot.term_ended`` (reason).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from decimal import ROUND_FLOOR, Decimal

from guardrails import Admitted, Context, Guard, Intent, Side, TermEnded, logs

log = logging.getLogger("bot")
SYMBOL = "BTC-USD"


async def _worker(ctx: Context, name: str, token: int, interval: float) -> None:
    try:
        await _submit_forever(ctx, name, token, interval)
    except BaseException as e:
        logs.event(log, "bot.worker_ended", worker=name, token=token, error=type(e).__name__)
        raise


async def _submit_forever(ctx: Context, name: str, token: int, interval: float) -> None:
    tick = ctx.instrument(SYMBOL).tick
    n = 0
    while True:
        n += 1
        mark = await ctx.mark(SYMBOL)
        price = (mark * Decimal("0.99") / tick).to_integral_value(ROUND_FLOOR) * tick
        intent = Intent(SYMBOL, Side.BUY, Decimal("0.0001"), price,
                        intent_id=f"{name}-{token}-{n}")
        try:
            decision = await ctx.submit(intent)
        except BaseException as e:
            logs.event(log, "bot.submit_raised", worker=name, token=token,
                       error=type(e).__name__)
            raise
        admitted = isinstance(decision, Admitted)
        logs.event(log, "bot.decision", worker=name, token=token,
                   outcome="admitted" if admitted else "denied",
                   reason=None if admitted else decision.reason.value)
        await asyncio.sleep(interval)


async def main(config: str, instance_id: str, workers: int, interval: float) -> int:
    async with Guard.from_config(config, instance_id=instance_id) as guard:
        while True:
            try:
                async with guard.active(name="bot") as ctx:
                    token = guard.token
                    assert token is not None
                    logs.event(log, "bot.active", token=token)
                    async with asyncio.TaskGroup() as tg:
                        for i in range(workers):
                            tg.create_task(_worker(ctx, f"w{i}", token, interval))
            except TermEnded as e:
                logs.event(log, "bot.term_ended", token=e.token, reason=e.reason)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("instance_id")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--interval", type=float, default=0.1)
    a = p.parse_args()
    logs.setup(fmt="kv")
    raise SystemExit(asyncio.run(main(a.config, a.instance_id, a.workers, a.interval)))
