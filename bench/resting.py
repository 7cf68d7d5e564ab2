"""Resting: a benchmark strategy that keeps a few bids resting below the market.

Used by the kill-switch benchmark so that a HALTED kill has real work to do: the active
instance must cancel these orders at the venue. It tops the book back up every
``interval`` (the gate denies it while the account is HALTED; it retries after resume).
"""

from __future__ import annotations

import itertools
import uuid
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from guardrails.model import Intent, Side

if TYPE_CHECKING:
    from guardrails.runtime.context import Context


class Resting:
    """Params: ``symbol``; ``orders`` resting bids (default 3) at ``offset`` below the mark
    (default 0.03, inside the 5 % price band, far enough not to fill); ``interval`` s."""

    def __init__(
        self, symbol: str, orders: int = 3, offset: str = "0.03", interval: str = "0.1"
    ) -> None:
        self.symbol = symbol
        self.orders = orders
        self.offset = Decimal(offset)
        self.interval = float(interval)
        self.prefix = f"rest-{uuid.uuid4().hex[:8]}"

    async def run(self, ctx: Context) -> None:
        inst = ctx.instrument(self.symbol)
        n = itertools.count()
        while True:
            missing = self.orders - len(await ctx.open_orders(self.symbol))
            for _ in range(max(0, missing)):
                mark = await ctx.mark(self.symbol)
                raw = mark * (1 - self.offset)
                price = (raw / inst.tick).to_integral_value(rounding=ROUND_FLOOR) * inst.tick
                await ctx.submit(
                    Intent(self.symbol, Side.BUY, inst.lot, price,
                           intent_id=f"{self.prefix}-{next(n)}")
                )
            await ctx.sleep(self.interval)
