"""The simulated market shared by the paper venue and the HTTP exchange simulator.

Pure functions, no I/O: the instruments' exact unit arithmetic (prices in ticks,
quantities in lots, money in integer units) and the seeded random walk of marks.

The walk is deterministic: the mark of step ``n`` is a pure function of the mark of step
``n - 1`` and ``(seed, symbol, n)``, computed in exact ``Decimal`` and rounded to the
instrument's tick. Any process that starts from a stored mark of step ``k`` therefore
computes the same mark for every step after ``k`` — several instances driving one
exchange's clock produce one price path, whoever advances it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext

from guardrails.config import PaperVenueConfig, RiskConfig
from guardrails.model import Order, Side

_TWO_64 = Decimal(2**64)


@dataclass(frozen=True, slots=True)
class Instrument:
    """Exact units of one symbol: a price is ``ticks * tick``, a size ``lots * lot``, and
    a notional ``lots * ticks * k`` money units (``k`` is a whole number by construction)."""

    symbol: str
    tick: Decimal
    lot: Decimal
    money_unit: Decimal
    k: int

    def ticks(self, price: Decimal) -> int | None:
        """``price`` in ticks, or ``None`` when it is not a positive multiple of the tick."""
        n = price / self.tick
        if price <= 0 or n != n.to_integral_value():
            return None
        return int(n)

    def lots(self, qty: Decimal) -> int | None:
        """``qty`` in lots, or ``None`` when it is not a positive multiple of the lot."""
        n = qty / self.lot
        if qty <= 0 or n != n.to_integral_value():
            return None
        return int(n)

    def price(self, ticks: int) -> Decimal:
        return self.tick * ticks

    def qty(self, lots: int) -> Decimal:
        return self.lot * lots

    def money(self, units: int) -> Decimal:
        return self.money_unit * units


def instruments_for(venue: PaperVenueConfig, risk: RiskConfig | None) -> dict[str, Instrument]:
    """The quoted symbols and their units.

    With ``risk`` (the normal case: ``make_venue`` passes the runtime's ``RiskConfig``) the
    instruments, ticks, lots and money unit are the account's. Without it, every symbol of
    ``start_prices`` is quoted with the tick its start price is written in (``"3000.00"``
    -> 0.01), a lot of 1e-8 and a money unit of tick x lot.
    """
    out: dict[str, Instrument] = {}
    if risk is not None:
        unit = Decimal(1).scaleb(-risk.quote_decimals)
        for sym, inst in risk.instruments.items():
            out[sym] = Instrument(sym, inst.tick, inst.lot, unit, int(inst.tick * inst.lot / unit))
        return out
    lot = Decimal("1e-8")
    for sym, px in venue.start_prices.items():
        exp = px.as_tuple().exponent
        tick = Decimal(1).scaleb(exp if isinstance(exp, int) and exp < 0 else 0)
        out[sym] = Instrument(sym, tick, lot, tick * lot, 1)
    return out


def validate_order(order: Order, instruments: Mapping[str, Instrument]) -> str:
    """Why the exchange refuses ``order`` as malformed, or ``""`` when it is well-formed."""
    inst = instruments.get(order.symbol)
    if inst is None:
        return "unknown_symbol"
    if not order.price.is_finite() or inst.ticks(order.price) is None:
        return "off_tick"
    if not order.qty.is_finite() or inst.lots(order.qty) is None:
        return "off_lot"
    if order.side not in (Side.BUY, Side.SELL):
        return "bad_side"
    return ""


def walk_next(prev_ticks: int, *, seed: int, symbol: str, n: int, volatility: Decimal) -> int:
    """Mark (in ticks) of step ``n`` given the mark of step ``n - 1``.

    ``z`` is uniform in [-1, 1), drawn from SHA-256 of ``seed|symbol|n``; the mark moves by
    ``volatility * z`` relative, rounded half-even to a whole tick, never below one tick.
    """
    digest = hashlib.sha256(f"{seed}|{symbol}|{n}".encode()).digest()
    with localcontext() as ctx:
        ctx.prec = 50
        z = Decimal(int.from_bytes(digest[:8], "big")) / _TWO_64 * 2 - 1
        nxt = (Decimal(prev_ticks) * (1 + volatility * z)).quantize(
            Decimal(1), rounding=ROUND_HALF_EVEN
        )
    return max(1, int(nxt))


def walk(
    start_ticks: int, from_step: int, to_step: int, *, seed: int, symbol: str, volatility: Decimal
) -> int:
    """Mark of step ``to_step`` given the mark ``start_ticks`` of step ``from_step``."""
    ticks = start_ticks
    for n in range(from_step + 1, to_step + 1):
        ticks = walk_next(ticks, seed=seed, symbol=symbol, n=n, volatility=volatility)
    return ticks


def start_ticks(venue: PaperVenueConfig, inst: Instrument) -> int:
    """Step 0 of ``inst``: its configured start price, rounded to the tick (at least one)."""
    px = venue.start_prices.get(inst.symbol)
    if px is None:
        raise ValueError(f"venue {venue.name!r} has no start price for {inst.symbol!r}")
    with localcontext() as ctx:
        ctx.prec = 50
        return max(1, int((px / inst.tick).quantize(Decimal(1), rounding=ROUND_HALF_EVEN)))
