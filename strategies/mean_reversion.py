"""Mean reversion: buy below the moving average of the mark, sell above it.

A readable example of the strategy API: it reads marks and the account's combined
position through the ``Context`` and submits limit intents; the gate decides whether
they may go (fence, kill switch, limits). It keeps at most one order of its own open
and cancels it before placing the next, and never holds more than ``max_position``.
"""

from __future__ import annotations

import uuid
from collections import deque
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING

from guardrails import logs, param_decimal, param_duration_s
from guardrails.model import Admitted, Intent, Side

if TYPE_CHECKING:
    from guardrails import Context


class MeanReversion:
    """Params: ``symbol``, ``window`` (marks in the average), ``threshold`` (relative
    distance from the average that triggers an order), ``size`` (order quantity),
    ``max_position`` (default 3 x size), ``interval`` (time between marks, default 1s)."""

    def __init__(
        self,
        symbol: str,
        window: int,
        threshold: object,
        size: object,
        max_position: object | None = None,
        interval: object = "1s",
    ) -> None:
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"param 'window': an integer >= 2 (got {window!r})")
        self.symbol = symbol
        self.window = window
        self.threshold = param_decimal("threshold", threshold)
        self.size = param_decimal("size", size)
        self.max_position = (
            3 * self.size if max_position is None else param_decimal("max_position", max_position)
        )
        self.interval = param_duration_s("interval", interval)
        self._session = uuid.uuid4().hex[:8]

    async def run(self, ctx: Context) -> None:
        tick = ctx.instrument(self.symbol).tick
        marks: deque[Decimal] = deque(maxlen=self.window)
        open_coid: str | None = None
        n = 0
        while True:
            await ctx.sleep(self.interval)
            mark = await ctx.mark(self.symbol)
            marks.append(mark)
            if len(marks) < self.window:
                continue
            mean = sum(marks, Decimal(0)) / len(marks)
            deviation = (mark - mean) / mean
            position = await ctx.position(self.symbol)
            if deviation < -self.threshold and position + self.size <= self.max_position:
                side, price = Side.BUY, _round(mark * (1 + self.threshold / 2), tick, ROUND_CEILING)
            elif deviation > self.threshold and position - self.size >= -self.max_position:
                side, price = Side.SELL, _round(mark * (1 - self.threshold / 2), tick, ROUND_FLOOR)
            else:
                continue
            if open_coid is not None and any(
                o.client_order_id == open_coid for o in await ctx.open_orders(self.symbol)
            ):
                await ctx.cancel(open_coid)
            n += 1
            logs.event(ctx.log, "strategy.signal", mark=mark, mean=mean.quantize(tick),
                       side=side.value, position=position)
            decision = await ctx.submit(
                Intent(self.symbol, side, self.size, price, tag=f"{self._session}-{n}")
            )
            open_coid = decision.client_order_id if isinstance(decision, Admitted) else None
            marks.clear()  # wait for a fresh window before acting again


def _round(price: Decimal, tick: Decimal, rounding: str) -> Decimal:
    return (price / tick).to_integral_value(rounding=rounding) * tick
