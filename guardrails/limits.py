"""One set of limits per account, stored with the account's state in Redis.

Invariant upheld: *risk is shared, not per process*. The gate reads the limits from
the account's ``limits`` HASH inside its script — never from a process's config — so
every instance enforces the same caps. An instance whose configured limits differ from
the stored ones refuses to become active and names each difference
(``check_or_init``); changing them is deliberate (``guardrails limits apply``), and the
hash records who set them and when.

Encoding (docs/keys.md): money limits are integers in units of 10^-quote_decimals
(rounded down, so a limit is never loosened by encoding); the price band is an integer
in parts per million (rounded down); the order rate in milli-orders per second; each
instrument is ``"<tick_m> <tick_s> <lot_m> <lot_s> <k> <max_lots>"`` where tick =
tick_m x 10^-tick_s, lot = lot_m x 10^-lot_s and k = tick x lot x 10^quote_decimals
(money units per lot per tick), so an order's notional is lots x ticks x k exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from guardrails import scripts
from guardrails.config import RiskConfig
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.tradingday import wall_clock_ms

MONEY_FIELDS = ("max_order_notional", "max_gross_exposure", "daily_loss_limit")


def mantissa_scale(d: Decimal) -> tuple[int, int]:
    """``d`` (finite, > 0) as ``(m, s)`` with d = m x 10^-s and s >= 0, m minimal."""
    n = d.normalize()
    exp = n.as_tuple().exponent
    assert isinstance(exp, int)
    if exp >= 0:
        return int(n), 0
    return int(n.scaleb(-exp)), -exp


def money_units(amount: Decimal, quote_decimals: int) -> int:
    """``amount`` in integer money units (10^-quote_decimals), rounded down."""
    return int(amount.scaleb(quote_decimals).to_integral_value(rounding=ROUND_FLOOR))


def money_decimal(units: int, quote_decimals: int) -> Decimal:
    """Integer money units back to an exact Decimal amount."""
    return Decimal(units).scaleb(-quote_decimals)


def per_lot_tick(risk: RiskConfig, symbol: str) -> int:
    """k: money units of one lot moving one tick (exact; config validates it is whole)."""
    inst = risk.instruments[symbol]
    return int((inst.tick * inst.lot).scaleb(risk.quote_decimals))


def encode(risk: RiskConfig) -> dict[str, str]:
    """The ``limits`` hash fields for ``risk`` (without who/when)."""
    qd = risk.quote_decimals
    rate_milli = int((risk.orders_per_second * 1000).to_integral_value(rounding=ROUND_FLOOR))
    if rate_milli < 1:
        raise ValueError("orders_per_second must be at least 0.001")
    fields = {
        "quote_decimals": str(qd),
        "timezone": risk.timezone,
        "max_order_notional": str(money_units(risk.max_order_notional, qd)),
        "max_gross_exposure": str(money_units(risk.max_gross_exposure, qd)),
        "daily_loss_limit": str(money_units(risk.daily_loss_limit, qd)),
        "band_ppm": str(int((risk.price_band * 1_000_000).to_integral_value(rounding=ROUND_FLOOR))),
        "rate_milli": str(rate_milli),
        "burst": str(risk.burst),
        "symbols": ",".join(sorted(risk.instruments)),
        "config": json.dumps(risk.model_dump(mode="json"), sort_keys=True, separators=(",", ":")),
        "digest": risk.digest(),
    }
    for sym, inst in risk.instruments.items():
        tm, ts = mantissa_scale(inst.tick)
        lm, ls = mantissa_scale(inst.lot)
        k = per_lot_tick(risk, sym)
        max_lots = int(inst.max_position / inst.lot)
        fields[f"i:{sym}"] = f"{tm} {ts} {lm} {ls} {k} {max_lots}"
    return fields


SCHEMA_DIFFERENCE = "key schema:"
"""How a key-schema difference starts in ``LimitsMismatch.differences``."""


@dataclass(frozen=True, slots=True)
class LimitsMismatch:
    """The configured limits differ from the account's stored limits."""

    differences: tuple[str, ...]
    stored_digest: str
    stored_by: str
    stored_at_ms: int

    @property
    def schema_only(self) -> bool:
        """Only the key-schema version differs: `limits apply` would not help, a
        migration would (``guardrails migrate``)."""
        return all(d.startswith(SCHEMA_DIFFERENCE) for d in self.differences)

    @property
    def action(self) -> str:
        """What the operator should do about it, in one sentence."""
        if self.schema_only:
            return ("migrate the account's keys: `guardrails migrate` shows the plan, "
                    "`guardrails migrate --apply` runs it once every instance is stopped")
        return ("fix the config, or change the account's limits deliberately with "
                "`guardrails limits apply`")

    def __str__(self) -> str:
        if self.schema_only:
            return "; ".join(self.differences)
        head = (
            f"configured limits differ from the account's stored limits "
            f"(digest {self.stored_digest}, set by {self.stored_by} at {self.stored_at_ms}); "
            f"run 'guardrails limits apply' to change them deliberately:"
        )
        return head + " " + "; ".join(self.differences)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differences(stored: dict[str, Any], configured: dict[str, Any]) -> list[str]:
    """Every field path whose value differs, as ``path: stored X, configured Y``."""
    a, b = flatten(stored), flatten(configured)
    out = []
    for path in sorted(set(a) | set(b)):
        if path not in a:
            out.append(f"{path}: not stored, configured {b[path]}")
        elif path not in b:
            out.append(f"{path}: stored {a[path]}, not configured")
        elif _norm(a[path]) != _norm(b[path]):
            out.append(f"{path}: stored {a[path]}, configured {b[path]}")
    return out


def _norm(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return Decimal(v)
        except ArithmeticError:
            return v
    return v


async def stored(redis: aioredis.Redis, keys: AccountKeys) -> dict[str, str]:
    """The raw ``limits`` hash (empty if none is stored)."""
    raw = await redis.hgetall(keys.limits)
    return {_s(k): _s(v) for k, v in raw.items()}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


async def _write(
    redis: aioredis.Redis, keys: AccountKeys, risk: RiskConfig, who: str, *, only_if_absent: bool
) -> dict[str, str] | None:
    """Store the limits (and the schema version if unset) in one transaction.

    With ``only_if_absent`` nothing is written when limits exist; returns the stored
    hash then. Returns None when it wrote."""
    fields = encode(risk)
    fields["set_by"] = who
    fields["set_at_ms"] = str(wall_clock_ms())
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.limits)
                current = {_s(k): _s(v) for k, v in (await pipe.hgetall(keys.limits)).items()}
                if only_if_absent and current:
                    await pipe.unwatch()  # type: ignore[no-untyped-call]
                    return current
                stale = [f for f in current if f.startswith("i:") and f not in fields]
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(keys.schema, SCHEMA_VERSION, nx=True)
                if stale:
                    pipe.hdel(keys.limits, *stale)
                pipe.hset(keys.limits, mapping=cast(Any, fields))
                pipe.xadd(
                    keys.journal,
                    {"ev": "limits", "by": who, "digest": fields["digest"]},
                    maxlen=100_000,
                    approximate=True,
                )
                await pipe.execute()
                return None
            except WatchError:
                continue


async def check_or_init(
    redis: aioredis.Redis, keys: AccountKeys, risk: RiskConfig, who: str
) -> LimitsMismatch | None:
    """Store ``risk`` as the account's limits if none are stored; otherwise compare.

    Returns None when the stored limits equal the configured ones (or were just
    stored), else a ``LimitsMismatch`` naming every difference — the caller must then
    refuse to become active. Also initialises the key-schema version; a stored schema
    version other than ours is reported as a difference too.
    """
    current = await _write(redis, keys, risk, who, only_if_absent=True)
    schema = await redis.get(keys.schema)
    diffs: list[str] = []
    if schema is not None and _s(schema) != str(SCHEMA_VERSION):
        diffs.append(f"{SCHEMA_DIFFERENCE} stored {_s(schema)}, this version speaks {SCHEMA_VERSION}"
                     " (stop every instance, then `guardrails migrate --apply`)")
    if current is not None:
        if current.get("digest") != risk.digest() or current.get("config") is None:
            try:
                stored_cfg = json.loads(current.get("config", "{}"))
            except ValueError:
                stored_cfg = {}
            diffs.extend(differences(stored_cfg, risk.model_dump(mode="json")) or
                         ["stored limits are unreadable or incomplete"])
        elif current != {**encode(risk), "set_by": current.get("set_by", ""),
                         "set_at_ms": current.get("set_at_ms", "")}:
            diffs.append("stored limit encoding differs from the configuration's")
    if not diffs:
        return None
    c = current or {}
    try:  # lib/int.lua's stored integer, not int(): ' 100' or '+1' is not one
        set_at = scripts.stored_nat(c.get("set_at_ms") or None, f"{keys.limits} set_at_ms")
    except ValueError as e:
        diffs.append(str(e))
        set_at = 0
    return LimitsMismatch(tuple(diffs), c.get("digest", "?"), c.get("set_by", "?"), set_at)


async def apply(redis: aioredis.Redis, keys: AccountKeys, risk: RiskConfig, who: str) -> None:
    """Deliberately replace the account's limits with ``risk`` (recorded with who/when)."""
    await _write(redis, keys, risk, who, only_if_absent=False)
