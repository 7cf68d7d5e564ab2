"""A simple quoter: keep one bid and one ask around the mark, refreshed periodically.

Each refresh cancels the previous quotes (through the ``Context``) and places new
ones ``spread`` apart around the mark. It skips the side that would take the
account's combined position beyond ``max_position``; the gate enforces every limit
anyway.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from guardrails import param_decimal, param_duration_s
from guardrails.model import Admitted, Intent, Side

if TYPE_CHECKING:
    from guardrails import Context


class Quoter:
    """Params: ``symbol``, ``spread`` (relative distance between bid and ask), ``size``,
    ``refresh`` (time between re-quotes, e.g. "2s"), ``max_position`` (default 5 x size)."""

    def __init__(
        self,
        symbol: str,
        spread: object,
        size: object,
        refresh: object = "2s",
        max_position: object | None = None,
    ) -> None:
        self.symbol = symbol
        self.spread = param_decimal("spread", spread)
        self.size = param_decimal("size", size)
        self.refresh = param_duration_s("refresh", refresh)
        self.max_position = (
            5 * self.size if max_position is None else param_decimal("max_position", max_position)
        )
        self._session = uuid.uuid4().hex[:8]

    async def run(self, ctx: Context) -> None:
        tick = ctx.instrument(self.symbol).tick
        quotes: list[str] = []
        n = 0
        while True:
            open_ids = {o.client_order_id for o in await ctx.open_orders(self.symbol)}
            for coid in quotes:
                if coid in open_ids:
                    await ctx.cancel(coid)
            quotes = []
            mark = await ctx.mark(self.symbol)
            position = await ctx.position(self.symbol)
            half = self.spread / 2
            n += 1
            wanted = []
            if position + self.size <= self.max_position:
                wanted.append((Side.BUY, _round(mark * (1 - half), tick, ROUND_FLOOR)))
            if position - self.size >= -self.max_position:
                wanted.append((Side.SELL, _round(mark * (1 + half), tick, ROUND_CEILING)))
            for side, price in wanted:
                decision = await ctx.submit(
                    Intent(self.symbol, side, self.size, price, tag=f"{self._session}-{n}")
                )
                if isinstance(decision, Admitted):
                    quotes.append(decision.client_order_id)
            await ctx.sleep(self.refresh)


def _round(price: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (price / tick).to_integral_value(rounding=rounding) * tick
