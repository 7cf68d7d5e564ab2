"""A prediction-market quoter: bids on both outcome tokens of one market (YES and NO),
never letting the combined position — what it holds plus what its resting bids could
still buy — exceed ``max_combined`` shares.

A YES and a NO share together pay exactly 1 USDC at resolution, so buying both below
``1 - edge`` in total locks in the difference. Each refresh cancels the previous bids
(through the ``Context``) and bids ``edge / 2`` below each midpoint. The budget is the
account's, read from Redis through the ``Context``: two copies of this strategy on one
wallet see one combined position, and the gate enforces the account's limits anyway.
"""

from __future__ import annotations

import uuid
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from guardrails import param_decimal, param_duration_s
from guardrails.model import Admitted, Intent, Side

if TYPE_CHECKING:
    from guardrails import Context


class BinaryQuoter:
    """Params: ``yes``, ``no`` (the two symbols), ``size`` (shares per bid), ``edge``
    (price below 1 wanted for YES + NO, e.g. "0.02"), ``max_combined`` (shares),
    ``refresh`` (e.g. "1s")."""

    def __init__(self, yes: str, no: str, size: object, max_combined: object,
                 edge: object = "0.02", refresh: object = "1s") -> None:
        self.symbols = (yes, no)
        self.size = param_decimal("size", size)
        self.max_combined = param_decimal("max_combined", max_combined)
        self.edge = param_decimal("edge", edge)
        self.refresh = param_duration_s("refresh", refresh)
        self._session = uuid.uuid4().hex[:8]
        self._round = 0  # kept across terms: every round's intents are new intents

    async def run(self, ctx: Context) -> None:
        while True:
            self._round += 1
            n = self._round
            for order in await ctx.open_orders():
                if order.symbol in self.symbols:
                    await ctx.cancel(order.client_order_id)
            held = sum([await ctx.position(s) for s in self.symbols], Decimal(0))
            committed = held
            for symbol in self.symbols:
                if committed + self.size > self.max_combined:
                    break
                tick = ctx.instrument(symbol).tick
                mark = await ctx.mark(symbol)
                price = ((mark - self.edge / 2) / tick).to_integral_value(ROUND_FLOOR) * tick
                if price < tick:
                    continue
                decision = await ctx.submit(
                    Intent(symbol, Side.BUY, self.size, price, tag=f"{self._session}-{n}")
                )
                if isinstance(decision, Admitted):
                    committed += self.size
            await ctx.sleep(self.refresh)
