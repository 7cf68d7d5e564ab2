"""``guardrails status``: one account's lease, latch, combined risk and instances, read-only.

Invariant served: *risk is shared, not per process* (DESIGN.md §2) — what an operator
sees here is the account's combined state in Redis, never one process's view. Status
(and the dashboard, which calls ``snapshot``) issue read-only Redis commands only
(GET, PTTL, TYPE, HGET, HMGET, HGETALL, SMEMBERS, XREVRANGE, ZRANGE, TIME), so they can run as a
read-only ACL user and never disturb the account.

The JSON form is a stable contract validated by ``docs/status.schema.json``: money and
quantities are decimal strings, times are Unix milliseconds (Redis server time), and a
part that could not be read is ``null`` with the reason in ``errors`` — never silently
omitted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from guardrails import redacted, scripts
from guardrails.config import Config, RiskConfig
from guardrails.fencing import read_alarm
from guardrails.infra import connect
from guardrails.keys import AccountId, AccountKeys, InvalidAccountId
from guardrails.killswitch import read_latch
from guardrails.ledger import Ledger
from guardrails.ops.common import load_target
from guardrails.prune import read_totals
from guardrails.registry import Registry, read_account_index

STATUS_SCHEMA_VERSION = 1
"""``schema_version`` of the JSON output; bumped on any incompatible change."""

RECENT_DENIALS = 20
"""How many recent denials status and the dashboard show per account."""

UNREACHABLE: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError)
"""Redis errors that mean "could not reach Redis" rather than "this part is odd"."""

Json = dict[str, Any]


# -- reading ------------------------------------------------------------------------


def _dec(value: object) -> str | None:
    """A Decimal (or decimal string) as a plain decimal string; None stays None."""
    if value is None:
        return None
    d = value if isinstance(value, Decimal) else Decimal(str(value))
    return format(d, "f")


def _int_or_none(value: object) -> int | None:
    # lib/int.lua's stored integer, not int(): ' 100', '+1', '1_000' are not one
    if value is None:
        return None
    try:
        return scripts.stored_int(str(value), "field")
    except ValueError:
        return None


def _stream_entry(entry_id: str, fields: Mapping[str, str]) -> Json:
    ms = _int_or_none(entry_id.split("-", 1)[0])
    out: Json = {"id": entry_id, "at_ms": ms}
    out.update({k: v for k, v in fields.items()})
    return out


async def _lease(redis: aioredis.Redis, keys: AccountKeys, errors: list[str]) -> Json:
    value = await redis.get(keys.lease)
    pttl = await redis.pttl(keys.lease)
    fence = await redis.get(keys.fence)
    holder: str | None = None
    token: int | None = None
    if value is not None:
        tok, sep, who = str(value).partition(":")
        token = _int_or_none(tok) if sep else None
        holder = who if sep else str(value)
        if token is None:
            errors.append(f"lease value {value!r} is not '<token>:<holder>'")
    if fence is not None and _int_or_none(fence) is None:
        errors.append(f"{keys.fence} value {fence!r} is not an integer")
    return {
        "holder": holder,
        "token": token,
        "ttl_ms": int(pttl) if value is not None and int(pttl) >= 0 else None,
        "fence": _int_or_none(fence),
    }


async def _fence_history(redis: aioredis.Redis, keys: AccountKeys) -> Json:
    """The fencing epoch and the lost-history alarm (``fencing.py``)."""
    epoch = await redis.get(keys.epoch)
    return {"epoch": None if epoch is None else str(epoch),
            "alarm": await read_alarm(redis, keys)}


async def _trading(redis: aioredis.Redis, keys: AccountKeys) -> Json:
    return (await read_latch(redis, keys)).to_json()


async def _counts(redis: aioredis.Redis, keys: AccountKeys) -> Json:
    raw = await redis.hgetall(keys.stats)
    denied: dict[str, int] = {}
    admitted = 0
    for key, value in raw.items():
        field = str(key)
        n = _int_or_none(value) or 0
        if field == "admitted":
            admitted = n
        elif field.startswith("denied:"):
            denied[field.removeprefix("denied:")] = n
    return {"admitted": admitted, "denied": dict(sorted(denied.items()))}


async def _prune(redis: aioredis.Redis, keys: AccountKeys) -> Json:
    """The prune sweep's totals and last run (``keys.prune_state``, one HGETALL)."""
    return (await read_totals(redis, keys)).to_json()


async def _denials(redis: aioredis.Redis, keys: AccountKeys) -> list[Json]:
    rows = await redis.xrevrange(keys.denials, "+", "-", count=RECENT_DENIALS)
    return [_stream_entry(str(i), {str(k): str(v) for k, v in (f or {}).items()})
            for i, f in rows or []]


async def _instances(redis: aioredis.Redis, keys: AccountKeys) -> list[Json]:
    """Live registry rows (``Registry.list_instances``: ZREVRANGE + HGETALL, read-only)."""
    out: list[Json] = []
    for row in await Registry.list_instances(redis, keys):
        item: Json = {}
        for k, v in row.items():
            if k == "standby_flag":
                item[k] = bool(v)
            elif k == "expired":
                continue  # live rows only here
            elif k == "cmdline":
                # masked when written; masked again here for rows an older version wrote
                item[k] = redacted.mask_text(str(v))
            else:
                item[k] = v if v is None or isinstance(v, int | bool) else str(v)
        out.append(item)
    return sorted(out, key=lambda r: str(r.get("id", "")))


async def _risk_for(
    redis: aioredis.Redis, keys: AccountKeys, cfg: Config | None
) -> RiskConfig | None:
    """The account's effective risk settings: the limits stored with the account (what the
    gate enforces, ``limits`` HASH field ``config``), else the config's for its account."""
    stored = await redis.hget(keys.limits, "config")
    if stored:
        return RiskConfig.model_validate(json.loads(str(stored), parse_float=Decimal))
    if cfg is not None and cfg.account_id == keys.account:
        return cfg.risk
    return None


async def _ledger_views(
    redis: aioredis.Redis, keys: AccountKeys, risk: RiskConfig
) -> tuple[list[Json], Json, list[Json]]:
    ledger = Ledger(redis, keys, risk)
    positions: list[Json] = []
    for symbol, p in sorted((await ledger.positions()).items()):
        positions.append(
            {
                "symbol": symbol,
                "qty": _dec(p.qty),
                "avg_cost": _dec(p.avg_cost),
                "mark": _dec(p.mark),
                "unrealized": _dec(p.unrealized),
                "realized_pnl": _dec(p.realized_pnl),
            }
        )
    b = await ledger.budget()
    limit = Decimal(str(b.limit))
    used = Decimal(str(b.used))
    budget: Json = {
        "trading_day": str(b.trading_day),
        "realized_loss": _dec(b.realized_loss),
        "unrealized_loss": _dec(b.unrealized_loss),
        "reserved_worst_loss": _dec(b.reserved_worst_loss),
        "limit": _dec(limit),
        "used": _dec(used),
        "remaining": _dec(limit - used),
        "used_fraction": _dec((used / limit).quantize(Decimal("0.0001")) if limit > 0 else None),
        "fees_uncounted": b.fees_uncounted,
    }
    orders: list[Json] = []
    for o in await ledger.open_orders():
        orders.append(_order_json(o))
    return positions, budget, orders


def _order_json(o: object) -> Json:
    fields = ("client_order_id", "symbol", "side", "qty", "price", "filled_qty", "state", "token")
    out: Json = {}
    for f in fields:
        v = getattr(o, f, None)
        if isinstance(v, Decimal):
            out[f] = _dec(v)
        elif v is None or isinstance(v, int):
            out[f] = v
        else:
            out[f] = str(getattr(v, "value", v))
    return out


async def snapshot(
    redis: aioredis.Redis, account: AccountId, *, config: Config | None = None
) -> Json:
    """Everything status shows about one account, JSON-ready (``docs/status.schema.json``).

    Each part is read independently: a part that fails is ``null`` and its error is in
    ``errors``; a Redis connection error propagates (the caller reports "could not check").
    """
    keys = AccountKeys(account)
    errors: list[str] = []
    out: Json = {"account": str(account)}

    async def part(name: str, coro: Any, default: Any) -> Any:
        try:
            return await coro
        except UNREACHABLE:
            raise  # "could not check" is the caller's to report, not a part's
        except Exception as e:  # one odd part (or a peer's reader failing) must not hide the rest
            errors.append(f"{name}: {type(e).__name__}: {e}")
        return default

    out["lease"] = await part("lease", _lease(redis, keys, errors), None)
    out["fence_history"] = await part("fence_history", _fence_history(redis, keys), None)
    out["trading"] = await part("trading", _trading(redis, keys), None)
    risk = await part("risk", _risk_for(redis, keys, config), None)
    if risk is not None:
        views = await part("ledger", _ledger_views(redis, keys, risk), None)
    else:
        views = None
        errors.append("positions/budget: no config or stored limits for this account")
    out["positions"], out["budget"], out["open_orders"] = views if views else (None, None, None)
    out["reservations"] = await part("reservations", redis.hgetall(keys.reservations), None)
    out["throttle"] = await part("throttle", redis.hgetall(keys.throttle), None)
    out["limits"] = await part("limits", redis.hgetall(keys.limits), None)
    out["counts"] = await part("counts", _counts(redis, keys), None)
    out["prune"] = await part("prune", _prune(redis, keys), None)
    out["recent_denials"] = await part("denials", _denials(redis, keys), None)
    out["instances"] = await part("instances", _instances(redis, keys), None)
    out["errors"] = errors
    return out


async def server_time_ms(redis: aioredis.Redis) -> int:
    sec, usec = await redis.time()
    return int(sec) * 1000 + int(usec) // 1000


async def status_document(
    redis: aioredis.Redis, accounts: list[AccountId], *, config: Config | None = None
) -> Json:
    """The whole ``status --json`` document for ``accounts``."""
    now = await server_time_ms(redis)
    snaps = [await snapshot(redis, a, config=config) for a in accounts]
    return {"schema_version": STATUS_SCHEMA_VERSION, "generated_at_ms": now, "accounts": snaps}


# -- rendering ----------------------------------------------------------------------


def _fmt(v: object) -> str:
    return "-" if v is None or v == "" else str(v)


def _stored_limits_config(limits: Json | None) -> Json:
    """The human-unit limits (the ``config`` JSON field the limits hash stores)."""
    if not limits or not limits.get("config"):
        return {}
    try:
        cfg = json.loads(limits["config"])
    except (TypeError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _reserved_text(res: Json, cfg: Json) -> str:
    """Open reservations in instrument units: ``ETH-USD buy 0.1 sell 0.1 worst-loss 14.91``."""
    instruments = cfg.get("instruments") or {}
    scale = Decimal(1).scaleb(-int(cfg.get("quote_decimals", 0))) if cfg else None
    per_symbol: dict[str, dict[str, str]] = {}
    for field, raw in res.items():
        symbol, _, kind = str(field).rpartition(":")
        try:
            n = Decimal(str(raw))
        except ArithmeticError:
            per_symbol.setdefault(symbol, {})[kind] = f"{raw}?"
            continue
        if n == 0:
            continue
        lot = (instruments.get(symbol) or {}).get("lot")
        if kind in ("buy", "sell") and lot:
            text = format(n * Decimal(lot), "f")
        elif kind == "loss" and scale is not None:
            text = format(n * scale, "f")
        else:
            text = f"{raw} (raw units)"
        per_symbol.setdefault(symbol, {})[kind] = text
    parts = []
    for symbol, kinds in sorted(per_symbol.items()):
        inner = " ".join(
            f"{'worst-loss' if k == 'loss' else k} {v}" for k, v in sorted(kinds.items())
        )
        parts.append(f"{symbol} {inner}")
    return "; ".join(parts) or "none"


def _throttle_text(th: Json, cfg: Json) -> str:
    try:
        tokens = Decimal(str(th.get("tokens"))) / 1000
    except ArithmeticError:
        return str(th)
    burst = cfg.get("burst", "?")
    rate = cfg.get("orders_per_second", "?")
    return f"{tokens:.1f} of {burst} orders available (refill {rate}/s; as of last admission)"


def _limits_text(limits: Json, cfg: Json) -> str:
    if not cfg:
        return " ".join(f"{k}={v}" for k, v in sorted(limits.items()))
    head = [
        f"max_order_notional={cfg.get('max_order_notional')}",
        f"max_gross_exposure={cfg.get('max_gross_exposure')}",
        f"daily_loss_limit={cfg.get('daily_loss_limit')}",
        f"price_band={cfg.get('price_band')}",
        f"tz={cfg.get('timezone')}",
    ]
    inst = " ".join(
        f"{sym}(max={i.get('max_position')} tick={i.get('tick')} lot={i.get('lot')})"
        for sym, i in sorted((cfg.get("instruments") or {}).items())
    )
    who = f"set_by={limits.get('set_by', '-')} digest={limits.get('digest', '-')}"
    return " ".join(head) + "\n          " + inst + "\n          " + who


def _iso(ms: object) -> str:
    """Unix ms as an ISO-8601 UTC time for people (the JSON keeps the integer)."""
    n = _int_or_none(ms)
    if n is None:
        return "-"
    return datetime.fromtimestamp(n / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _prune_text(pr: Json) -> str:
    """``prune     removed orders=… intents=… fills=… tombstones=… (… B)`` and the last sweep."""
    head = (f"prune     removed orders={pr['orders']} intents={pr['intents']} "
            f"fills={pr['fills']} tombstones={pr['tombstones']} ({pr['tombstone_bytes']} B)")
    every = f" every {pr['interval_ms']}ms" if pr.get("interval_ms") else " (no schedule)"
    if pr.get("last_run_ms") is None:
        last = "\n          last sweep: never" + every
    else:
        outcome = pr.get("last_outcome") or "?"
        if outcome == "failed":
            outcome = f"FAILED: {pr.get('last_error') or '?'}"
        last = (f"\n          last sweep {_iso(pr['last_run_ms'])} {outcome} "
                f"(orders={pr['last_orders']} fills={pr['last_fills']}) "
                f"by={_fmt(pr.get('last_by'))}{every}")
    if pr.get("last_skipped_ms") is not None and (pr.get("last_run_ms") or 0) < pr["last_skipped_ms"]:
        last += f"; skipped {_iso(pr['last_skipped_ms'])} (archive locked by another sweep)"
    return head + last + f"\n          archive {_fmt(pr.get('archive'))}"


_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """One line of ``text`` as a terminal must show it: every control character but tab
    (C0 including newline and carriage return, DEL, C1 such as CSI) and the bidi
    overrides as a visible ``\\xNN`` / ``\\uNNNN`` escape. What Redis holds (a kill
    reason, a holder id, a denial detail) is anyone's text: raw, ``\\r\\e[2K`` would
    redraw a HALTED line as ACTIVE, a newline would forge a line."""
    def esc(m: re.Match[str]) -> str:
        c = ord(m.group())
        return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
    return _UNPRINTABLE.sub(esc, text)


def fees_uncounted_text(count: int, day: str) -> str:
    """The status line for fills applied today without their fee (``day`` field
    ``fees_uncounted``): what the budget line above it leaves out, and what to do."""
    return (f"FEES      {count} fill(s) on {day} applied without their fee (paid in a currency "
            "the venue could not value, e.g. BNB): realized_loss and used undercount them; "
            "turn BNB fee payment off, or account for these fees by hand")


def render_table(doc: Json) -> str:
    """The human-readable form of a status document (each line ``printable``)."""
    lines: list[str] = []
    for a in doc["accounts"]:
        lines.append(f"== {a['account']} ==")
        lease = a["lease"] or {}
        lines.append(
            f"lease     holder={_fmt(lease.get('holder'))} token={_fmt(lease.get('token'))} "
            f"ttl={_fmt(lease.get('ttl_ms'))}ms fence={_fmt(lease.get('fence'))}"
        )
        alarm = (a.get("fence_history") or {}).get("alarm")
        if alarm:
            lines.append(
                f"FENCE     history lost ({_fmt(alarm.get('reason'))}): instance "
                f"{_fmt(alarm.get('by'))} saw token {_fmt(alarm.get('seen_token'))}; no lease "
                "until `guardrails fence recover`"
            )
        t = a["trading"] or {}
        lines.append(
            f"trading   {_fmt(t.get('state'))}  reason={_fmt(t.get('reason'))} "
            f"by={_fmt(t.get('by'))} at={_iso(t.get('at_ms'))}"
        )
        b = a["budget"]
        if b:
            lines.append(
                f"budget    day={b['trading_day']} used={b['used']} / limit={b['limit']} "
                f"(realized_loss={b['realized_loss']} unrealized_loss={b['unrealized_loss']} "
                f"reserved_worst={b['reserved_worst_loss']})"
            )
            if b.get("fees_uncounted"):
                lines.append(fees_uncounted_text(b["fees_uncounted"], b["trading_day"]))
        if a["positions"]:
            lines.append(f"{'symbol':<12}{'qty':>14}{'avg_cost':>14}{'mark':>14}{'unrealized':>14}")
            for p in a["positions"]:
                lines.append(
                    f"{p['symbol']:<12}{_fmt(p['qty']):>14}{_fmt(p['avg_cost']):>14}"
                    f"{_fmt(p['mark']):>14}{_fmt(p['unrealized']):>14}"
                )
        limits_cfg = _stored_limits_config(a["limits"])
        if a["open_orders"] is not None:
            lines.append(f"open      {len(a['open_orders'])} order(s)")
            for o in a["open_orders"]:
                lines.append(
                    f"  order   {_fmt(o.get('client_order_id'))[:16]} {_fmt(o.get('side')):<4} "
                    f"{_fmt(o.get('qty'))} {_fmt(o.get('symbol'))} @ {_fmt(o.get('price'))} "
                    f"filled={_fmt(o.get('filled_qty'))} {_fmt(o.get('state'))} "
                    f"token={_fmt(o.get('token'))}"
                )
        if a["reservations"]:
            lines.append("reserved  " + _reserved_text(a["reservations"], limits_cfg))
        if a["throttle"]:
            lines.append("throttle  " + _throttle_text(a["throttle"], limits_cfg))
        if a["limits"]:
            lines.append("limits    " + _limits_text(a["limits"], limits_cfg))
        c = a["counts"]
        if c:
            denied = " ".join(f"{k}={v}" for k, v in c["denied"].items()) or "none"
            lines.append(f"counts    admitted={c['admitted']} denied: {denied}")
        pr = a.get("prune")
        if pr and (pr["orders"] or pr["fills"] or pr["last_run_ms"] or pr["interval_ms"]):
            lines.append(_prune_text(pr))
        for d in (a["recent_denials"] or [])[:5]:
            lines.append(f"denial    {_iso(d.get('at_ms'))} {d.get('reason')} {d.get('detail', '')}")
        for i in a["instances"] or []:
            lines.append(
                f"instance  {i.get('id')} host={i.get('host')} pid={i.get('pid')} "
                f"role={i.get('role')} token={_fmt(i.get('token'))}"
            )
        for e in a["errors"]:
            lines.append(f"error     {e}")
    return "\n".join(printable(line) for line in lines)


async def _status(args: argparse.Namespace) -> int:
    url, cfg = load_target(args)
    if args.account:
        try:
            accounts = [AccountId.parse(args.account)]
        except InvalidAccountId as e:
            print(f"guardrails status: {e}", file=sys.stderr)
            return 2
    elif cfg is not None:
        accounts = [cfg.account_id]
    else:
        accounts = []
    redis = await connect.connect(url)
    try:
        if not accounts:
            index = await read_account_index(redis)
            if index.warning():
                print(f"guardrails status: {index.warning()}", file=sys.stderr)
            accounts = index.accounts
        doc = await status_document(redis, accounts, config=cfg)
    except RedisError as e:
        print(f"guardrails status: could not read Redis at {connect.describe(url)}: "
              f"{redacted.mask_text(str(e))}", file=sys.stderr)
        return 2
    finally:
        await redis.aclose()
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_table(doc) if doc["accounts"] else "no known accounts")
    # read, but part of an account could not be (its "errors" say which): not a clean 0
    return 1 if any(a["errors"] for a in doc["accounts"]) else 0


def cmd_status(args: argparse.Namespace) -> int:
    """``guardrails status``: exit 0 when read, 1 when read but part of an account could
    not be (a key of the wrong type, a field unreadable: its ``errors`` name it), 2 when
    Redis could not be read."""
    return asyncio.run(_status(args))
