"""Looper: a test strategy that submits a stream of distinct small orders.

Used by the process tests, the kill-switch test and the chaos run: every intent has a
distinct id (``<prefix>-<n>``), so each one is a fresh decision at the gate and the
logs show exactly which were admitted, denied or sent. Orders are priced ``offset``
away from the mark (negative: a resting bid/ask below/above; positive: crossing).
"""

from __future__ import annotations

import uuid
from decimal import ROUND_FLOOR
from typing import TYPE_CHECKING

from guardrails import logs, param_choice, param_decimal, param_duration_s
from guardrails.model import Intent, Side

if TYPE_CHECKING:
    from guardrails import Context


class Looper:
    """Params: ``symbol``; ``qty`` (default: one lot); ``interval`` (default "200ms");
    ``count`` (0 = forever); ``side`` ("buy", "sell" or "alternate"); ``offset`` (relative
    price offset from the mark for a buy, mirrored for a sell; default "-0.01": resting);
    ``prefix`` (intent id prefix; default random per process)."""

    def __init__(
        self,
        symbol: str,
        qty: object | None = None,
        interval: object = "200ms",
        count: int = 0,
        side: str = "alternate",
        offset: object = "-0.01",
        prefix: str | None = None,
    ) -> None:
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"param 'count': an integer >= 0 (got {count!r})")
        self.symbol = symbol
        self.qty = param_decimal("qty", qty) if qty is not None else None
        self.interval = param_duration_s("interval", interval)
        self.count = count
        self.side = param_choice("side", side, ("buy", "sell", "alternate"))
        self.offset = param_decimal("offset", offset, positive=False)
        self.prefix = prefix or f"loop-{uuid.uuid4().hex[:8]}"

    async def run(self, ctx: Context) -> None:
        inst = ctx.instrument(self.symbol)
        qty = self.qty or inst.lot
        n = 0
        while self.count == 0 or n < self.count:
            n += 1
            side = self._side(n)
            mark = await ctx.mark(self.symbol)
            raw = mark * (1 + side.sign * self.offset)
            price = (raw / inst.tick).to_integral_value(rounding=ROUND_FLOOR) * inst.tick
            await ctx.submit(
                Intent(self.symbol, side, qty, price, intent_id=f"{self.prefix}-{n}")
            )
            await ctx.sleep(self.interval)
        logs.event(ctx.log, "strategy.done", submitted=n)

    def _side(self, n: int) -> Side:
        if self.side == "alternate":
            return Side.BUY if n % 2 else Side.SELL
        return Side(self.side)


__all__ = ["Looper"]
